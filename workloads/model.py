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
    max_seq_len: int = option(1024, "Longest context the model accepts (sizes learned positions and RoPE tables).")
    mlp: str = option("swiglu", "Feed-forward kind: swiglu | gelu.")
    ffn_hidden: int = option(0, "Feed-forward hidden width; 0 = auto (gelu: 4*d_model, swiglu: 8/3*d_model up to a multiple of 64).")
    norm: str = option("rmsnorm", "Normalisation: rmsnorm | layernorm (without bias).")
    position: str = option("rope", "Position encoding: rope | learned | alibi.")
    rope_theta: float = option(10000.0, "RoPE base: rotation wavelengths run from 2*pi up to about 2*pi*rope_theta tokens.")
    norm_eps: float = option(1e-5, "Epsilon added to the variance inside each norm.")
    dropout: float = option(0.0, "Dropout on embeddings, attention weights and residual branches.")
    init_std: float = option(0.02, "Std of the normal init of all weights; residual projections get init_std/sqrt(2*n_layers).")
    tie_embeddings: bool = option(True, "Share one weight between the token embedding and the output head.")
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
        kinds = (("mlp", MLP_KINDS), ("norm", NORM_KINDS), ("position", POSITION_KINDS), ("attention_mask", ATTENTION_MASKS))
        for name, allowed in kinds:
            if getattr(self, name) not in allowed:
                raise UserInputError(f"model.{name}: {getattr(self, name)!r} is not one of {' | '.join(allowed)}")
        if self.d_model % self.n_heads:
            raise UserInputError(f"model.n_heads: {self.n_heads} does not divide model.d_model={self.d_model}")
        if self.position == "rope" and self.head_dim % 2:
            raise UserInputError(
                f"model.position: rope rotates pairs of channels, but the head dim "
                f"model.d_model/model.n_heads = {self.d_model}/{self.n_heads} = {self.head_dim} is odd"
            )
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


def count_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of `GPT(cfg)`; a tied embedding/head weight counts once."""
    d = cfg.d_model
    per_block = 2 * d + 4 * d * d + _mlp_parameters(cfg)  # two norms, qkv + out-proj, mlp
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
    d = cfg.d_model
    return cfg.n_layers * (4 * d * d + _mlp_parameters(cfg)) + cfg.vocab_size * d


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward + backward FLOPs per token, PaLM/Chinchilla convention.

    6 * N for the weight matmuls (2 forward, 4 backward per parameter) plus
    12 * n_layers * d_model * seq_len for attention scores and weighted values
    (2 matmuls * 2 FLOPs * 3 for forward+backward), with no halving for the
    causal mask. Example: nanoGPT's CPU "baby GPT" (4 layers, 4 heads, width 128,
    block 64, vocab 65, GELU MLP) has N = 794,752 matmul parameters (nanoGPT prints
    0.80M, adding biases and norms), so 6*794,752 + 12*4*128*64 = 5,161,728 FLOPs
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
    """Rotate channel pairs (i, i + head_dim/2) of x (B, T, H, head_dim) by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, head_dim/2) each
    cos = cos[:, None, :]  # (T, 1, head_dim/2): the same rotation for every head
    sin = sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class AttentionInputs(nn.Module):
    """Builds what every block needs from the segment ids alone, so that each
    pipeline stage can rebuild it: `(attn_bias, rope)`.

    attn_bias is None (plain causal: SDPA's `is_causal`, which allows flash kernels;
    without segment ids or under `attention_mask: causal`), a bool mask (B, 1, T, T)
    that is True where attention is allowed (causal AND same document), or for ALiBi
    a float bias (B or 1, n_heads, T, T) with -inf where attention is not allowed.
    rope is `(cos, sin)`, each (T, head_dim/2), or None.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.position = cfg.position
        self.max_seq_len = cfg.max_seq_len
        self.per_document = cfg.attention_mask == "document"
        if cfg.position == "rope":
            inv_freq = cfg.rope_theta ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
            angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), inv_freq)  # (max_seq_len, head_dim/2)
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
        if segment_ids is not None and self.per_document:
            device = segment_ids.device
            causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()  # (T, T)
            same_document = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
            allowed = (causal & same_document)[:, None]  # (B, 1, T, T)

        if self.position != "alibi":
            return allowed, rope

        positions = torch.arange(seq_len, device=self.slopes.device)
        distance = positions[None, :] - positions[:, None]  # (T, T): key minus query, <= 0 in the past
        bias = (self.slopes[:, None, None] * distance).to(dtype)[None]  # (1, H, T, T)
        if allowed is None:
            allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=bias.device).tril()
        return bias.masked_fill(~allowed, float("-inf")), rope


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)


class Embedding(nn.Module):
    """Token embedding, plus learned absolute positions when `position == "learned"`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(input_ids)  # (B, T, d_model)
        if self.positions is not None:
            x = x + self.positions(torch.arange(input_ids.shape[1], device=input_ids.device))  # + (T, d_model)
        return self.dropout(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, rope) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).unbind(2)  # (B, T, H, head_dim) each
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, head_dim)
        y = F.scaled_dot_product_attention(
            q, k, v,
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

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, rope) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_bias, rope)
        return x + self.mlp(self.norm2(x))  # (B, T, d_model)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T); targets of -100 are ignored.

    "mean" averages over counted tokens (training); "sum" gives summed nats (evaluation).
    """
    # Views, not copies: the logits are the largest activation of the model.
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

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
        x = self.embed_tokens(input_ids)  # (B, T, d_model)
        attn_bias, rope = self.attention_inputs(segment_ids, input_ids.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, attn_bias, rope)
        logits = self.head(x)  # (B, T, V)
        if targets is None:
            return logits
        return lm_loss(logits, targets, reduction)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to input_ids (B, T); returns (B, T + max_new_tokens).

        The context is cropped to the last max_seq_len tokens. temperature 0 is greedy;
        top_k keeps the k most likely tokens, top_p the smallest set whose probability
        reaches top_p (nucleus). There is no KV cache: each step reruns the context.
        Dropout follows the module's mode, so call `.eval()` first when dropout > 0.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        for _ in range(max_new_tokens):
            logits = self(input_ids[:, -self.cfg.max_seq_len:])[:, -1, :]  # (B, V)
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth_best = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth_best, float("-inf"))
                if top_p is not None:
                    logits = _nucleus_filter(logits, top_p)
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            input_ids = torch.cat((input_ids, next_token), dim=1)
        return input_ids


def _nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask all but the most likely tokens whose total probability first reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = F.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p,
    # so the most likely token always stays.
    drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))
