"""Moving a `GPT` to and from Hugging Face transformers' on-disk format, exactly.

Export writes a directory that `AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` load with no custom code, and that gives the
same logits and the same token ids as this project. Only two families of our
configs have an exact equivalent there:

    position  norm     mlp     tie_embeddings  ->  transformers class
    rope      rmsnorm  swiglu  either          ->  LlamaForCausalLM (GQA via num_key_value_heads)
    learned   layernorm gelu   True            ->  GPT2LMHeadModel (all biases zero, exact erf GELU)

Anything else (alibi, rope with layernorm or gelu, untied or grouped-query GPT-2)
is refused with the model field that has no exact equivalent, rather than
exported as something that computes a different function.

Import reads a Llama-architecture `config.json` and `model.safetensors` (sharded
or not) into our GPT; settings we cannot reproduce exactly (rope scaling, biases,
other activations, a head_dim that does not split hidden_size) are refused with
the HF key and value at fault.

Nothing here imports transformers: the files are plain JSON, safetensors and the
sentencepiece model, so exporting needs no transformers install and the tests
prove that transformers reads them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from workloads.errors import UserInputError
from workloads.model import GPT, ModelConfig
from workloads.tokenizer import EOS_ID, Tokenizer

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"

LLAMA = "llama"
GPT2 = "gpt2"

# LlamaConfig's defaults in transformers 5.24, which apply when a config.json leaves a key out.
_LLAMA_DEFAULTS = {
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "rope_theta": 10000.0,
}
# Tensors some Llama checkpoints carry that hold no weights (old transformers saved RoPE tables).
_DERIVED_TENSOR_SUFFIX = ".rotary_emb.inv_freq"


# ---------------------------------------------------------------------------
# Which transformers architecture a config is
# ---------------------------------------------------------------------------


def hf_family(cfg: ModelConfig) -> str:
    """LLAMA or GPT2; refuses a config with no exact transformers equivalent, naming the field."""
    if cfg.position == "rope":
        family, wanted = LLAMA, {"norm": "rmsnorm", "mlp": "swiglu"}
    elif cfg.position == "learned":
        family, wanted = GPT2, {"norm": "layernorm", "mlp": "gelu", "tie_embeddings": True}
        if cfg.kv_heads != cfg.n_heads:
            raise UserInputError(
                f"model.n_kv_heads: {cfg.n_kv_heads} has no exact Hugging Face equivalent with "
                "model.position='learned' (GPT-2 has no grouped-query attention)"
            )
    else:
        raise UserInputError(
            f"model.position: {cfg.position!r} has no exact Hugging Face equivalent "
            "(exportable: rope + rmsnorm + swiglu as Llama, learned + layernorm + gelu + tied as GPT-2)"
        )
    for name, value in wanted.items():
        if getattr(cfg, name) != value:
            raise UserInputError(
                f"model.{name}: {getattr(cfg, name)!r} has no exact Hugging Face equivalent with "
                f"model.position={cfg.position!r} ({family} needs {name}={value!r})"
            )
    return family


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


def to_hf(model: GPT, eos_id: int = EOS_ID) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json contents, state dict) of the transformers model that computes what `model` computes.

    The state dict holds only what transformers saves itself: with tied embeddings
    there is no `lm_head.weight`. Tensors are contiguous CPU copies in the model's dtype.
    """
    cfg = model.cfg
    family = hf_family(cfg)
    ours = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    dtype = str(ours["embed.tokens.weight"].dtype).removeprefix("torch.")
    if family == LLAMA:
        config, tensors = _llama_config(cfg, eos_id, dtype), _llama_tensors(ours, cfg)
    else:
        config, tensors = _gpt2_config(cfg, eos_id, dtype), _gpt2_tensors(ours, cfg)
    # Clones: q/k/v are views of one fused tensor, and safetensors refuses tensors that share memory.
    return config, {name: tensor.contiguous().clone() for name, tensor in tensors.items()}


def _llama_config(cfg: ModelConfig, eos_id: int, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": LLAMA,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.resolved_ffn_hidden,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers 5 reads rope_parameters; 4.x reads the top-level rope_theta. Same value.
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": None,  # this project's tokenizers have no beginning-of-sequence token
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "dtype": dtype,
    }


def _llama_tensors(ours: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    hd = cfg.head_dim
    tensors = {"model.embed_tokens.weight": ours["embed.tokens.weight"], "model.norm.weight": ours["final_norm.weight"]}
    for i in range(cfg.n_layers):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        # The fused rows are [queries; keys; values], each head's rotate-half channels in HF's order.
        q, k, v = ours[o + "attn.qkv.weight"].split((cfg.n_heads * hd, cfg.kv_heads * hd, cfg.kv_heads * hd))
        tensors.update(
            {
                h + "input_layernorm.weight": ours[o + "norm1.weight"],
                h + "self_attn.q_proj.weight": q,  # (n_heads*hd, d_model)
                h + "self_attn.k_proj.weight": k,  # (kv_heads*hd, d_model)
                h + "self_attn.v_proj.weight": v,  # (kv_heads*hd, d_model)
                h + "self_attn.o_proj.weight": ours[o + "attn.proj.weight"],
                h + "post_attention_layernorm.weight": ours[o + "norm2.weight"],
                h + "mlp.gate_proj.weight": ours[o + "mlp.w1.weight"],  # silu(w1 x) gates ...
                h + "mlp.up_proj.weight": ours[o + "mlp.w3.weight"],  # ... w3 x
                h + "mlp.down_proj.weight": ours[o + "mlp.w2.weight"],
            }
        )
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = ours["lm_head.weight"]
    return tensors


def _gpt2_config(cfg: ModelConfig, eos_id: int, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": GPT2,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.resolved_ffn_hidden,
        "activation_function": "gelu",  # exact erf GELU; GPT-2's own "gelu_new" is the tanh approximation
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": None,  # GPT2Config defaults both to 50256
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "dtype": dtype,
    }


def _gpt2_tensors(ours: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2's Conv1D stores weights as (in, out): our Linear weights transposed; its biases are zeros."""

    def zeros(width: int) -> torch.Tensor:
        return torch.zeros(width, dtype=ours["embed.tokens.weight"].dtype)

    d = cfg.d_model
    tensors = {
        "transformer.wte.weight": ours["embed.tokens.weight"],
        "transformer.wpe.weight": ours["embed.positions.weight"],
        "transformer.ln_f.weight": ours["final_norm.weight"],
        "transformer.ln_f.bias": zeros(d),
    }
    for i in range(cfg.n_layers):
        o, h = f"blocks.{i}.", f"transformer.h.{i}."
        tensors.update(
            {
                h + "ln_1.weight": ours[o + "norm1.weight"],
                h + "ln_1.bias": zeros(d),
                h + "attn.c_attn.weight": ours[o + "attn.qkv.weight"].T,  # (d_model, 3*d_model): [q | k | v] columns
                h + "attn.c_attn.bias": zeros(3 * d),
                h + "attn.c_proj.weight": ours[o + "attn.proj.weight"].T,
                h + "attn.c_proj.bias": zeros(d),
                h + "ln_2.weight": ours[o + "norm2.weight"],
                h + "ln_2.bias": zeros(d),
                h + "mlp.c_fc.weight": ours[o + "mlp.fc.weight"].T,  # (d_model, hidden)
                h + "mlp.c_fc.bias": zeros(cfg.resolved_ffn_hidden),
                h + "mlp.c_proj.weight": ours[o + "mlp.proj.weight"].T,  # (hidden, d_model)
                h + "mlp.c_proj.bias": zeros(d),
            }
        )
    return tensors


def save_hf(model: GPT, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write `model` and `tokenizer` as a transformers model directory (created if missing)."""
    out = save_hf_model(model, out_dir, tokenizer.eos_id)
    save_hf_tokenizer(tokenizer, out)
    return out


def save_hf_model(model: GPT, out_dir: str | Path, eos_id: int = EOS_ID) -> Path:
    """The model's part of `save_hf`: config.json, generation_config.json, model.safetensors."""
    config, tensors = to_hf(model, eos_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_FILE, config)
    _save_weights(tensors, out)
    # pad = eos: rows of a batch that have finished keep emitting eos, as workloads.generation does.
    _write_json(out / GENERATION_CONFIG_FILE, {"bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": eos_id})
    return out


def save_hf_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> None:
    """tokenizer.model plus the tokenizer_config.json that makes `AutoTokenizer` give our ids.

    The settings matter: with the defaults transformers adds a beginning-of-sequence
    token and a dummy-prefix space, and built from the file alone (`LlamaTokenizer(vocab_file=...)`)
    it encodes every text to []. See STACK-NOTES, "transformers 5.24 and this project's
    sentencepiece tokenizer".
    """
    (out_dir / TOKENIZER_FILE).write_bytes(tokenizer.model_bytes)
    pieces = spm.SentencePieceProcessor(model_proto=tokenizer.model_bytes)
    _write_json(
        out_dir / TOKENIZER_CONFIG_FILE,
        {
            "tokenizer_class": "LlamaTokenizer",
            "legacy": False,
            "add_prefix_space": False,
            "add_bos_token": False,
            "add_eos_token": False,
            "bos_token": None,
            "eos_token": pieces.id_to_piece(tokenizer.eos_id),
            "unk_token": pieces.id_to_piece(pieces.unk_id()),
        },
    )


def save_safetensors(model: GPT, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Our own format: GPT's state dict (a tied weight once, as `embed.tokens.weight`),
    `config.json` of its ModelConfig and the tokenizer file."""
    cfg = model.cfg
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    if cfg.tie_embeddings:
        del tensors["lm_head.weight"]  # the same tensor as embed.tokens.weight
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # init_from named where training started; these weights are now the whole model.
    _write_json(out / CONFIG_FILE, dataclasses.asdict(dataclasses.replace(cfg, init_from="")))
    _save_weights(tensors, out)
    (out / TOKENIZER_FILE).write_bytes(tokenizer.model_bytes)
    return out


def _save_weights(tensors: dict[str, torch.Tensor], out: Path) -> None:
    """model.safetensors, readable like the config.json beside it (safetensors itself creates files mode 0600)."""
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
    os.chmod(out / WEIGHTS_FILE, (out / CONFIG_FILE).stat().st_mode & 0o777)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------


def read_hf_model_config(hf_dir: str | Path) -> ModelConfig:
    """Our ModelConfig of the Llama model in `hf_dir/config.json`; refuses what we cannot compute exactly."""
    path = Path(hf_dir) / CONFIG_FILE
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserInputError(f"{path}: cannot read ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(hf, dict):
        raise UserInputError(f"{path}: not a JSON object")

    def refuse(key: str, value: Any, why: str) -> UserInputError:
        return UserInputError(f"{path}: {key}={value!r} has no exact equivalent here ({why})")

    def get(key: str) -> Any:
        if key in hf:
            return hf[key]
        if key in _LLAMA_DEFAULTS:
            return _LLAMA_DEFAULTS[key]
        raise UserInputError(f"{path}: no {key!r}")

    if hf.get("model_type") != LLAMA:
        raise refuse("model_type", hf.get("model_type"), "only Llama-architecture models are imported")
    if (hf.get("architectures") or ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        raise refuse("architectures", hf["architectures"], "only LlamaForCausalLM is imported")
    for key, value in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if get(key) != value:
            raise refuse(key, get(key), f"this GPT's Llama family has {key}={value!r}")

    d_model, n_heads = get("hidden_size"), get("num_attention_heads")
    kv_heads = hf.get("num_key_value_heads") or n_heads
    if d_model % n_heads:
        raise refuse("num_attention_heads", n_heads, f"it does not divide hidden_size={d_model}")
    head_dim = hf.get("head_dim") or d_model // n_heads
    if head_dim != d_model // n_heads or head_dim % 2:
        raise refuse(
            "head_dim",
            head_dim,
            f"heads here are hidden_size/num_attention_heads = {d_model // n_heads} wide, an even number",
        )
    if n_heads % kv_heads:
        raise refuse("num_key_value_heads", kv_heads, f"it does not divide num_attention_heads={n_heads}")
    rope_theta = _plain_rope_theta(hf, refuse)

    cfg = ModelConfig(
        vocab_size=get("vocab_size"),
        d_model=d_model,
        n_layers=get("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=0 if kv_heads == n_heads else kv_heads,
        max_seq_len=get("max_position_embeddings"),
        mlp="swiglu",
        ffn_hidden=get("intermediate_size"),
        norm="rmsnorm",
        position="rope",
        rope_theta=float(rope_theta),
        norm_eps=float(get("rms_norm_eps")),
        dropout=0.0,
        tie_embeddings=bool(get("tie_word_embeddings")),
    )
    try:
        cfg.validate()
    except UserInputError as e:
        raise UserInputError(f"{path}: {e}") from e
    return cfg


def _plain_rope_theta(hf: Mapping[str, Any], refuse: Callable[[str, Any, str], UserInputError]) -> float:
    """rope_theta of unscaled RoPE, wherever the config keeps it; refuses any scaling.

    transformers 5 keeps RoPE settings in `rope_parameters`; older configs have a
    top-level `rope_theta` and `rope_scaling` (which, when set, takes precedence).
    """
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope = hf.get(key) or {}
    if not isinstance(rope, dict) or any(isinstance(value, dict) for value in rope.values()):
        raise refuse(key, rope, "only one plain RoPE for all layers is supported")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise refuse(f"{key}.rope_type", rope_type, "RoPE scaling of any kind changes the rotation angles")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise refuse("partial_rotary_factor", partial, "every channel of a head is rotated here")
    return rope.get("rope_theta", hf.get("rope_theta", _LLAMA_DEFAULTS["rope_theta"]))


def load_hf_weights(model: GPT, hf_dir: str | Path) -> GPT:
    """Copy a Llama checkpoint's safetensors weights into `model` (built from `read_hf_model_config`).

    Every tensor the model needs must be there with its exact shape, and no
    unknown tensor may be left over (it would be a weight we silently drop).
    With tied embeddings a stored `lm_head.weight` is ignored, as transformers does.
    """
    cfg = model.cfg
    if hf_family(cfg) != LLAMA:
        raise UserInputError(f"model.position: {cfg.position!r}: only Llama-family weights are imported")
    hf_dir = Path(hf_dir)
    expected = {name: tuple(tensor.shape) for name, tensor in _llama_tensors(model.state_dict(), cfg).items()}
    stored = _read_safetensors(hf_dir)  # {name: tensor}
    for name in stored:
        ignored = name.endswith(_DERIVED_TENSOR_SUFFIX) or (name == "lm_head.weight" and cfg.tie_embeddings)
        if name not in expected and not ignored:
            raise UserInputError(f"{hf_dir}: unexpected tensor {name!r} (not part of a Llama model of this config)")
    for name, shape in expected.items():
        if name not in stored:
            raise UserInputError(f"{hf_dir}: tensor {name!r} is missing")
        if tuple(stored[name].shape) != shape:
            raise UserInputError(
                f"{hf_dir}: tensor {name!r} has shape {list(stored[name].shape)}, config.json says {list(shape)}"
            )
    model.load_state_dict(_from_llama(stored, cfg))  # copies into the model's dtype (bf16 -> fp32 is exact)
    return model


def _from_llama(hf: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from a Llama one: the inverse of `_llama_tensors`."""
    ours = {"embed.tokens.weight": hf["model.embed_tokens.weight"], "final_norm.weight": hf["model.norm.weight"]}
    ours["lm_head.weight"] = hf["model.embed_tokens.weight"] if cfg.tie_embeddings else hf["lm_head.weight"]
    for i in range(cfg.n_layers):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        projections = [hf[h + f"self_attn.{p}_proj.weight"] for p in "qkv"]
        ours.update(
            {
                o + "norm1.weight": hf[h + "input_layernorm.weight"],
                o + "attn.qkv.weight": torch.cat(projections),  # (qkv_width, d_model)
                o + "attn.proj.weight": hf[h + "self_attn.o_proj.weight"],
                o + "norm2.weight": hf[h + "post_attention_layernorm.weight"],
                o + "mlp.w1.weight": hf[h + "mlp.gate_proj.weight"],
                o + "mlp.w3.weight": hf[h + "mlp.up_proj.weight"],
                o + "mlp.w2.weight": hf[h + "mlp.down_proj.weight"],
            }
        )
    return ours


def _read_safetensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors`, or of the shards that `model.safetensors.index.json` lists."""
    index = hf_dir / WEIGHTS_INDEX_FILE
    if (hf_dir / WEIGHTS_FILE).is_file():
        files = [hf_dir / WEIGHTS_FILE]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserInputError(f"{index}: no weight_map ({type(e).__name__})") from e
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    else:
        raise UserInputError(f"{hf_dir}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} (only safetensors weights are read)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as shard:
                tensors.update({name: shard.get_tensor(name) for name in shard.keys()})
        except (OSError, SafetensorError) as e:
            raise UserInputError(f"{file}: cannot read safetensors ({e})") from e
    return tensors


def hf_tokenizer_path(hf_dir: str | Path) -> Path:
    """The directory's sentencepiece `tokenizer.model`, if it round-trips text exactly."""
    path = Path(hf_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise UserInputError(
            f"{hf_dir}: no {TOKENIZER_FILE}; only sentencepiece tokenizers are used here "
            "(a tokenizer.json / BPE-merges tokenizer cannot be)"
        )
    tokenizer = Tokenizer.load(path)
    try:
        tokenizer.check_exact()
    except UserInputError as e:
        raise UserInputError(f"{path}: {e}") from e
    return path
