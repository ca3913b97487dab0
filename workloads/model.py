"""A decoder-only transformer (GPT) and the arithmetic that goes with it.

The model is a plain `nn.Module`: it knows nothing of Ray, DeepSpeed or ranks,
and moves between devices only through `.to()`. Wrapping it in ZeRO engines or
cutting it into pipeline stages happens elsewhere, from these pieces:

    input_ids ─► embed ─► blocks[0] … blocks[n_layers-1] ─► final_norm ─► lm_head ─► logits
                            ▲ each block also receives attention_inputs(segment_ids, T, dtype)

Pipeline cut points, which a wrapper can use without changing this file:
  * first stage:  `GPT.embed_tokens(input_ids)`  (module `embed`: tokens, learned positions)
  * middle:       any contiguous run of `GPT.blocks`, called as `block(x, attn_bias, rope)`
  * last stage:   `GPT.head(x)` (modules `final_norm`, `lm_head`), then `lm_loss(logits, targets)`
Every stage rebuilds `(attn_bias, rope) = model.attention_inputs(segment_ids, T, dtype)`
from the segment ids it receives: `attention_inputs` is a small module with no
parameters, only non-persistent buffers, so each stage may hold a copy. With
`tie_embeddings` the token embedding and `lm_head` share one weight, which a
first/last-stage split must tie across stages.

Positions are absolute within the packed sequence, also for packed documents:
document boundaries only change the attention mask. RoPE and ALiBi depend on
relative distance alone, so a document gives the same logits packed or alone;
learned positions see a later document at its offset in the pack (as GPT-2 does).
That mask is `attention_mask: document`, the default; `causal` ignores the segment
ids and attends across boundaries, as GPT-2 and nanoGPT train, so SDPA runs
without a mask and may pick flash kernels.

FLOPs follow the PaLM/Chinchilla convention (see `training_flops_per_token`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from workloads.errors import UserInputError
from workloads.schema import option

MLP_KINDS = ("swiglu", "gelu")
NORM_KINDS = ("rmsnorm", "layernorm")
POSITION_KINDS = ("rope", "learned", "alibi")
ATTENTION_MASKS = ("document", "causal")
INIT_SOURCES = ("hf:", "checkpoint:")

# Layers that write into the residual stream: GPT-2 scales their init by 1/sqrt(2 * n_layers)
# so that the residual stream's variance does not grow with depth.
_RESIDUAL_PROJECTIONS = ("attn.proj.weight", "mlp.w2.weight", "mlp.proj.weight")


@dataclasses.dataclass
class ModelConfig:
    """The `model.` section. Linear layers have no biases, as in PaLM and LLaMA:
    fewer parameters, and PaLM reports better training stability without them."""

    vocab_size: int = option(4096, "Rows of the token embedding; at least the tokenizer's vocabulary size.")
    d_model: int = option(256, "Width of the residual stream.")
    n_layers: int = option(4, "Number of transformer blocks.")
    n_heads: int = option(4, "Attention heads per block; must divide d_model.")
    n_kv_heads: int = option(
        0, "Key/value heads (grouped-query attention); must divide n_heads; 0 = n_heads (plain multi-head attention)."
    )
    max_seq_len: int = option(1024, "Longest context the model accepts (sizes learned positions and RoPE tables).")
    mlp: str = option("swiglu", "Feed-forward kind: swiglu | gelu.")
    ffn_hidden: int = option(
        0, "Feed-forward hidden width; 0 = auto (gelu: 4*d_model, swiglu: 8/3*d_model up to a multiple of 64)."
    )
    norm: str = option("rmsnorm", "Normalisation: rmsnorm | layernorm (without bias).")
    position: str = option("rope", "Position encoding: rope | learned | alibi.")
    rope_theta: float = option(
        10000.0, "RoPE base: rotation wavelengths run from 2*pi up to about 2*pi*rope_theta tokens."
    )
    norm_eps: float = option(1e-5, "Epsilon added to the variance inside each norm.")
    dropout: float = option(0.0, "Dropout on embeddings, attention weights and residual branches.")
    init_std: float = option(
        0.02, "Std of the normal init of all weights; residual projections get init_std/sqrt(2*n_layers)."
    )
    tie_embeddings: bool = option(True, "Share one weight between the token embedding and the output head.")
    init_from: str = option(
        "",
        "Start from existing weights instead of a random init: hf:DIR (a Hugging Face Llama-architecture "
        "checkpoint on disk; its config.json sets the shape, its tokenizer.model the tokenizer); the fine-tuning "
        "stages also take a checkpoint or run directory of this project, or an MLflow run id.",
    )
    # Changes no parameter, buffer or FLOP count: checkpoints load under either setting.
    attention_mask: str = option(
        "document",
        "Attention in packed samples: document (within a token's own document only: a (B,1,T,T) mask, no flash "
        "kernels) | causal (across documents, as GPT-2 trains: segment ids ignored, flash-eligible without alibi).",
    )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def qkv_width(self) -> int:
        """Output width of the fused query/key/value projection: n_heads queries, kv_heads keys and values."""
        return (self.n_heads + 2 * self.kv_heads) * self.head_dim

    @property
    def resolved_ffn_hidden(self) -> int:
        """The feed-forward width actually built.

        SwiGLU has three matrices instead of two, so 8/3*d keeps its parameter count
        at GELU's 8*d^2; rounding up to a multiple of 64 keeps matmul shapes tile-friendly.
        """
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.mlp == "gelu":
            return 4 * self.d_model
        two_thirds_of_4d = -(-8 * self.d_model // 3)
        return 64 * -(-two_thirds_of_4d // 64)

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("ffn_hidden", self.ffn_hidden, minimum=0)
        _require_int("n_kv_heads", self.n_kv_heads, minimum=0)
        kinds = (
            ("mlp", MLP_KINDS),
            ("norm", NORM_KINDS),
            ("position", POSITION_KINDS),
            ("attention_mask", ATTENTION_MASKS),
        )
        for name, allowed in kinds:
            if getattr(self, name) not in allowed:
                raise UserInputError(f"model.{name}: {getattr(self, name)!r} is not one of {' | '.join(allowed)}")
        if self.d_model % self.n_heads:
            raise UserInputError(f"model.n_heads: {self.n_heads} does not divide model.d_model={self.d_model}")
        if self.n_heads % self.kv_heads:
            raise UserInputError(f"model.n_kv_heads: {self.n_kv_heads} does not divide model.n_heads={self.n_heads}")
        if self.position == "rope" and self.head_dim % 2:
            raise UserInputError(
                f"model.position: rope rotates pairs of channels, but the head dim "
                f"model.d_model/model.n_heads = {self.d_model}/{self.n_heads} = {self.head_dim} is odd"
            )
        if self.init_from and not self.init_from.startswith(INIT_SOURCES):
            raise UserInputError(f"model.init_from: {self.init_from!r} must start with {' or '.join(INIT_SOURCES)}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise UserInputError(f"model.{name}: {getattr(self, name)} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise UserInputError(f"model.dropout: {self.dropout} must be in [0, 1)")


def _require_int(name: str, value, minimum: int) -> None:
    # bool is an int subclass, but `n_layers: true` is a typo, not a layer count.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"model.{name}: {value!r} must be an integer >= {minimum}")


# ---------------------------------------------------------------------------
# Exact counts from the config alone (MFU, scaling laws)
# ---------------------------------------------------------------------------


def _mlp_parameters(cfg: ModelConfig) -> int:
    matrices = 3 if cfg.mlp == "swiglu" else 2
    return matrices * cfg.d_model * cfg.resolved_ffn_hidden


def _attention_parameters(cfg: ModelConfig) -> int:
    return cfg.d_model * cfg.qkv_width + cfg.d_model * cfg.d_model  # fused qkv + out-proj


def count_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of `GPT(cfg)`; a tied embedding/head weight counts once."""
    d = cfg.d_model
    per_block = 2 * d + _attention_parameters(cfg) + _mlp_parameters(cfg)  # two norms, attention, mlp
    total = cfg.vocab_size * d + cfg.n_layers * per_block + d  # + final norm
    if cfg.position == "learned":
        total += cfg.max_seq_len * d
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * d
    return total


def matmul_parameters(cfg: ModelConfig) -> int:
    """Parameters that take part in a matrix multiply for every token.

    All block linear weights plus the output head (counted even when tied: the head
    matmul is real work). Embedding lookups, learned positions and norm weights
    cost no matmul and are left out.
    """
    return cfg.n_layers * (_attention_parameters(cfg) + _mlp_parameters(cfg)) + cfg.vocab_size * cfg.d_model


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward + backward FLOPs per token, PaLM/Chinchilla convention.

    6 * N for the weight matmuls (2 forward, 4 backward per parameter) plus
    12 * n_layers * d_model * seq_len for attention scores and weighted values
    (2 matmuls * 2 FLOPs * 3 for forward+backward), with no halving for the
    causal mask (grouped-query attention shares keys, not score FLOPs). Example: nanoGPT's CPU
    "baby GPT" (4 layers, 4 heads, width 128, block 64, vocab 65, GELU MLP) has N = 794,752 matmul
    parameters (nanoGPT prints 0.80M, adding biases and norms), so 6*794,752 + 12*4*128*64 = 5,161,728 FLOPs
    per token.
    """
    return 6 * matmul_parameters(cfg) + 12 * cfg.n_layers * cfg.d_model * seq_len


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward-only FLOPs per token (evaluation, inference): a third of training."""
    return training_flops_per_token(cfg, seq_len) // 3


# ---------------------------------------------------------------------------
# Position encodings and masks
# ---------------------------------------------------------------------------


def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes from Press et al.: a geometric sequence starting at
    2^(-8/n). For n not a power of two, take the closest smaller power of two and
    fill the remaining heads with every other slope of the next power of two."""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    if closest == n_heads:
        return power_of_two_slopes(n_heads)
    return power_of_two_slopes(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x (B, T, H, head_dim) by position-dependent angles.

    cos and sin are (T, head_dim/2) when every row has the same positions (training), or
    (B, T, head_dim/2) when each row has its own (decoding left-padded prompts).
    """
    return _Rotation.apply(x, cos, sin)


class _Rotation(torch.autograd.Function):
    """RoPE as one autograd node: the gradient of a rotation is the rotation by the opposite
    angles, so the backward is one more rotation and saves no activations (cos and sin are
    slices of the tables), where autograd through the elementwise forward took a dozen ops."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, sign=1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, sign=-1.0), None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """(x1 cos - x2 sin, x2 cos + x1 sin) with sin's sign flipped by `sign`, written straight into the two halves."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, head_dim/2) each
    cos = cos.unsqueeze(-2)  # (..., T, 1, head_dim/2): the same rotation for every head
    sin = sin.unsqueeze(-2)
    if torch.compiler.is_compiling():  # dynamo cannot trace `out=` into a view; inductor fuses this anyway
        return torch.cat(
            (torch.addcmul(x1 * cos, x2, sin, value=-sign), torch.addcmul(x2 * cos, x1, sin, value=sign)), -1
        )
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    out1, out2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin, value=sign)
    return out


def one_document_per_row(segment_ids: torch.Tensor) -> bool:
    """Whether every row of segment_ids (B, T) holds a single document, so that the per-document
    mask is the causal one. Reads one bool back from the device."""
    return bool((segment_ids == segment_ids[:, :1]).all())


class AttentionInputs(nn.Module):
    """Builds what every block needs from the segment ids alone, so that each
    pipeline stage can rebuild it: `(attn_bias, rope)`.

    attn_bias is None (plain causal: SDPA's `is_causal`, which allows flash kernels;
    without segment ids, under `attention_mask: causal`, or when every row holds one
    document, where the per-document mask is the causal one), an additive mask
    (B, 1, T, T) in `dtype`, 0 where attention is allowed (causal AND same document)
    and -inf elsewhere (built once per forward: SDPA would turn a bool mask into this
    in every layer, forward and backward), or for ALiBi a float bias
    (B or 1, n_heads, T, T) with -inf where attention is not allowed.
    rope is `(cos, sin)`, each (T, head_dim/2), or None.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.position = cfg.position
        self.max_seq_len = cfg.max_seq_len
        self.per_document = cfg.attention_mask == "document"
        if cfg.position == "rope":
            inv_freq = cfg.rope_theta ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
            angles = torch.outer(
                torch.arange(cfg.max_seq_len, dtype=torch.float64), inv_freq
            )  # (max_seq_len, head_dim/2)
            # Not persistent: derived from the config, so checkpoints need not carry them.
            self.register_buffer("cos", angles.cos().float(), persistent=False)
            self.register_buffer("sin", angles.sin().float(), persistent=False)
        if cfg.position == "alibi":
            self.register_buffer("slopes", torch.tensor(alibi_slopes(cfg.n_heads)), persistent=False)

    def forward(self, segment_ids: torch.Tensor | None, seq_len: int, dtype: torch.dtype):
        if seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds model.max_seq_len={self.max_seq_len}")
        rope = None
        if self.position == "rope":
            rope = (self.cos[:seq_len].to(dtype), self.sin[:seq_len].to(dtype))

        allowed = None
        if segment_ids is not None and self.per_document and not one_document_per_row(segment_ids):
            positions = torch.arange(seq_len, device=segment_ids.device)
            causal = positions[None, :] <= positions[:, None]  # (T, T): key at or before query
            same_document = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
            allowed = (causal & same_document)[:, None]  # (B, 1, T, T)

        if self.position != "alibi":
            if allowed is None:
                return None, rope
            zero = torch.zeros((), dtype=dtype, device=allowed.device)
            return torch.where(allowed, zero, float("-inf")), rope

        positions = torch.arange(seq_len, device=self.slopes.device)
        distance = positions[None, :] - positions[:, None]  # (T, T): key minus query, <= 0 in the past
        bias = (self.slopes[:, None, None] * distance).to(dtype)[None]  # (1, H, T, T)
        if allowed is None:
            allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=bias.device).tril()
        return bias.masked_fill(~allowed, float("-inf")), rope

    def for_decoding(self, cache: KVCache, query_positions: torch.Tensor, dtype: torch.dtype):
        """`(attn_bias, rope)` for t new tokens appended to a KV cache that already holds `cache.length`.

        query_positions (B, t) are each row's own positions (left padding does not count).
        A query attends to earlier cache slots that hold real tokens, and to itself (so a
        padding query, whose output is never used, still has one key and stays finite).
        """
        start, t = cache.length, query_positions.shape[1]
        if start + t > self.max_seq_len:
            raise ValueError(f"sequence length {start + t} exceeds model.max_seq_len={self.max_seq_len}")
        device = query_positions.device
        query_slots = torch.arange(start, start + t, device=device)  # (t,)
        key_slots = torch.arange(start + t, device=device)  # (L,)
        itself = key_slots[None, :] == query_slots[:, None]  # (t, L)
        causal = key_slots[None, :] <= query_slots[:, None]  # (t, L)
        real_keys = cache.valid[:, None, : start + t]  # (B, 1, L)
        allowed = ((real_keys | itself) & causal)[:, None]  # (B, 1, t, L)
        rope = None
        if self.position == "rope":
            rope = (self.cos[query_positions].to(dtype), self.sin[query_positions].to(dtype))  # (B, t, head_dim/2) each
        if self.position != "alibi":
            return allowed, rope
        key_positions = cache.positions[:, : start + t]  # (B, L)
        distance = key_positions[:, None, :] - query_positions[:, :, None]  # (B, t, L)
        bias = (self.slopes[None, :, None, None] * distance[:, None]).to(dtype)  # (B, H, t, L)
        return bias.masked_fill(~allowed, float("-inf")), rope


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, as `nn.RMSNorm` (same `weight`, same state dict).

    Where torch has fused RMSNorm kernels (CUDA) they run. On a CPU torch runs it as a
    chain of elementwise ops, forward and backward (LayerNorm has a fused kernel there);
    `_RMSNormFunction` makes fewer passes over the activations, in its forward and in
    its hand-written backward.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return _RMSNormFunction.apply(x, self.weight, self.eps)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # Reduced-precision activations are normalised in float32, as torch's own rms_norm does.
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.linalg.vecdot(wide, wide).unsqueeze(-1).div_(x.shape[-1]).add_(eps).rsqrt_()  # (..., 1)
        normed = wide * rstd  # (..., dim)
        ctx.save_for_backward(normed, weight, rstd)
        return (normed * weight).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, weight, rstd = ctx.saved_tensors
        dim = normed.shape[-1]
        grad_weight = torch.linalg.vecdot(
            grad.reshape(-1, dim).to(normed.dtype), normed.reshape(-1, dim), dim=0
        )  # (dim,)
        grad_normed = (grad * weight).to(normed.dtype)
        # d normed / d x = rstd * (I - normed normed^T / dim), applied to grad_normed
        along = torch.linalg.vecdot(grad_normed, normed).unsqueeze(-1).div_(-dim)  # (..., 1)
        grad_x = torch.addcmul(grad_normed, normed, along).mul_(rstd)
        return grad_x.to(grad.dtype), grad_weight.to(weight.dtype), None


class Embedding(nn.Module):
    """Token embedding, plus learned absolute positions when `position == "learned"`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """positions (B, T) are given when rows have their own (decoding); else 0..T-1 for every row."""
        x = self.tokens(input_ids)  # (B, T, d_model)
        if self.positions is not None:
            if positions is None:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = x + self.positions(positions)  # + (T or B x T, d_model)
        return self.dropout(x)


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention with one fused q/k/v projection.

    The projection's rows are all queries, then the keys, then the values; with
    n_kv_heads < n_heads each key/value head serves n_heads / n_kv_heads query heads.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, cfg.qkv_width, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, rope, cache_slot=None) -> torch.Tensor:
        """cache_slot = (keys, values, start) of a KV cache: this call's keys and values are
        written at `start` and the queries attend to all of the cache up to them."""
        B, T, C = x.shape
        hd = self.head_dim
        qkv = self.qkv(x).view(B, T, self.n_heads + 2 * self.kv_heads, hd)  # query heads, then key, then value heads
        qk, v = qkv.split((self.n_heads + self.kv_heads, self.kv_heads), dim=2)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # queries and keys in one pass
        q, k = qk.split((self.n_heads, self.kv_heads), dim=2)  # (B, T, H or H_kv, head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H or H_kv, T, head_dim)
        if cache_slot is not None:
            keys, values, start = cache_slot  # (B, H_kv, capacity, head_dim) each
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
            k, v = keys[:, :, : start + T], values[:, :, : start + T]  # (B, H_kv, L, head_dim)
        if self.kv_heads != self.n_heads:
            groups = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, L, head_dim)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_bias,
            is_causal=attn_bias is None,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, d_model)
        return self.resid_dropout(self.proj(y))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.resolved_ffn_hidden
        self.w1 = nn.Linear(cfg.d_model, hidden, bias=False)
        self.w3 = nn.Linear(cfg.d_model, hidden, bias=False)  # gate
        self.w2 = nn.Linear(hidden, cfg.d_model, bias=False)  # down
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))  # (B, T, hidden) -> (B, T, d_model)


class GeluMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.resolved_ffn_hidden, bias=False)
        self.proj = nn.Linear(cfg.resolved_ffn_hidden, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, hidden) -> (B, T, d_model)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = SwiGLU(cfg) if cfg.mlp == "swiglu" else GeluMLP(cfg)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, rope, cache_slot=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_bias, rope, cache_slot)
        return x + self.mlp(self.norm2(x))  # (B, T, d_model)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T); targets of -100 are ignored.

    "mean" averages over counted tokens (training); "sum" gives summed nats (evaluation).
    Targets may be int32, as the loader stores them: they are widened here, on their
    device, because cross-entropy takes int64 class indices.
    """
    # Views, not copies: the logits are the largest activation of the model.
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1).long(), reduction=reduction)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position (B, T), in fp32; 0 where the target is -100 (not scored)."""
    scored = targets != -100
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked * scored


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

# Where each of the pipeline's layers (the cut points above, in model order: the embedding, the
# n_layers blocks, the final norm, the head) keeps its weights in GPT's state dict. A pipeline
# starts from a GPT's weights and its checkpoints load back into one through this map.
EMBEDDING_PREFIX = "embed."
FINAL_NORM_PREFIX = ""  # the layer's own module is `final_norm`, as in GPT
HEAD_PREFIX = ""  # likewise `lm_head`


def block_prefix(index: int) -> str:
    return f"blocks.{index}."


def pipeline_layer_prefix(cfg: ModelConfig, index: int) -> str | None:
    """The state-dict prefix of pipeline layer `index` (0 = embedding, n_layers + 2 = head).

    None for the last stage's copy of a tied embedding, which is the first layer's weight again.
    """
    if index == 0:
        return EMBEDDING_PREFIX
    if index <= cfg.n_layers:
        return block_prefix(index - 1)
    if index == cfg.n_layers + 1:
        return FINAL_NORM_PREFIX
    return None if cfg.tie_embeddings else HEAD_PREFIX


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.attention_inputs = AttentionInputs(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight
        self._init_weights()

    def _init_weights(self) -> None:
        residual_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(_RESIDUAL_PROJECTIONS):
                nn.init.normal_(param, 0.0, residual_std)
            elif param.dim() == 2:  # linear and embedding weights; norms keep their ones
                nn.init.normal_(param, 0.0, self.cfg.init_std)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """First pipeline stage: (B, T) token ids -> (B, T, d_model)."""
        return self.embed(input_ids)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Last pipeline stage: (B, T, d_model) -> logits (B, T, vocab_size)."""
        return self.lm_head(self.final_norm(x))

    def hidden_states(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output, normalised: (B, T, d_model), what the output head (or a scalar head) reads."""
        x = self.embed_tokens(input_ids)  # (B, T, d_model)
        attn_bias, rope = self.attention_inputs(segment_ids, input_ids.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, attn_bias, rope)
        return self.final_norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Logits (B, T, V) when targets is None, else the loss (see `lm_loss`).

        segment_ids (B, T) mark the documents of packed sequences: under
        `attention_mask: document` tokens attend only to earlier tokens of the same
        document; under `causal` the segment ids are ignored.
        """
        logits = self.lm_head(self.hidden_states(input_ids, segment_ids))  # (B, T, V)
        if targets is None:
            return logits
        return lm_loss(logits, targets, reduction)

    def decode(self, input_ids: torch.Tensor, cache: KVCache, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, t, V) of t new tokens per row, appended to `cache` (inference).

        valid (B, t) is False at left padding: padding takes no position and no token
        attends to it, so a padded row gives exactly what it gives alone. Call once with
        the prompts (prefill), then with one token per row at a time.
        """
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        positions = cache.claim(valid)  # (B, t)
        x = self.embed(input_ids, positions)  # (B, t, d_model)
        attn_bias, rope = self.attention_inputs.for_decoding(cache, positions, x.dtype)
        for index, block in enumerate(self.blocks):
            x = block(x, attn_bias, rope, (cache.keys[index], cache.values[index], cache.length))
        cache.length += input_ids.shape[1]
        return self.head(x)  # (B, t, V)


class ScalarHeadModel(nn.Module):
    """A GPT backbone read by a linear head that gives one number per sequence (a reward model, a critic).

    The number is read at each row's last token (`last_index`, (B,)): under causal
    attention that token has seen the whole sequence, and padding after it changes nothing.
    """

    def __init__(self, backbone: GPT):
        super().__init__()
        self.backbone = backbone
        self.score = nn.Linear(backbone.cfg.d_model, 1)
        nn.init.normal_(self.score.weight, 0.0, backbone.cfg.init_std)
        nn.init.zeros_(self.score.bias)

    @property
    def cfg(self) -> ModelConfig:
        return self.backbone.cfg

    def forward(self, input_ids: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone.hidden_states(input_ids)  # (B, T, d_model)
        last = hidden[torch.arange(len(input_ids), device=input_ids.device), last_index]  # (B, d_model)
        return self.score(last).squeeze(-1).float()  # (B,)


class KVCache:
    """Keys and values of every layer for a batch being decoded, with each slot's position.

    Preallocated for `capacity` tokens per row; `GPT.decode` fills it left to right.
    """

    def __init__(self, cfg: ModelConfig, batch: int, capacity: int, device, dtype: torch.dtype = torch.float32):
        shape = (batch, cfg.kv_heads, capacity, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.positions = torch.zeros(batch, capacity, dtype=torch.long, device=device)  # (B, capacity)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # False: empty or padding
        self.length = 0

    def claim(self, valid: torch.Tensor) -> torch.Tensor:
        """Record the next t slots' validity (B, t); returns their positions (B, t).

        A row's position counts its real tokens only; padding gets the next real
        token's position (it is never attended to, so that position is never used).
        """
        start, t = self.length, valid.shape[1]
        if start + t > self.valid.shape[1]:
            raise ValueError(f"KV cache of {self.valid.shape[1]} tokens cannot take {start + t}")
        seen = self.valid[:, :start].sum(dim=1, keepdim=True)  # (B, 1)
        positions = seen + valid.cumsum(dim=1) - valid.long()  # (B, t)
        self.valid[:, start : start + t] = valid
        self.positions[:, start : start + t] = positions
        return positions
