"""Export to and import from Hugging Face transformers give the same numbers as this project.

Tiny random models (2 layers, width 64) on real text: logits within 1e-4 of the
largest logit, identical greedy tokens, identical token ids, and a Llama
checkpoint imported and exported again bit for bit.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import transformers
from safetensors.torch import load_file, save_file

from workloads.errors import UserInputError
from workloads.generation import Sampling, generate
from workloads.hf_interop import (
    hf_tokenizer_path,
    load_hf_weights,
    read_hf_model_config,
    save_hf,
    save_hf_tokenizer,
    save_safetensors,
    to_hf,
)
from workloads.model import GPT, ModelConfig
from workloads.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN_MODULES = ["argparse.py", "dataclasses.py", "functools.py", "inspect.py", "pathlib.py", "typing.py"]
HELD_OUT_MODULES = ["textwrap.py", "json/decoder.py", "json/encoder.py", "shutil.py", "tokenize.py", "enum.py"]
NON_ASCII_TEXTS = [
    "",
    "caf\u00e9 na\u00efve \u00fcber e\u0301 a\u0308 \u0915\u094d\u0937 z\u0351\u0352",
    "CJK \u4e2d\u6587\u6f22\u5b57 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4",
    "emoji \U0001f600\U0001f468\u200d\U0001f469\u200d\U0001f467 flags \U0001f1ef\U0001f1f5",
    "tabs\tand\r\nwindows\rlines\n\n\n  double  spaces  ",
    "   leading and trailing spaces   ",
    "control " + "".join(chr(c) for c in range(32)) + "\x7f\x80\x9f",
    "\ufeffbyte order mark, replacement \ufffd, max \U0010ffff, private \ue000",
    "        " * 20 + "deep indentation",
]
LLAMA = dict(n_kv_heads=2, rope_theta=500.0, norm_eps=1e-6)  # grouped-query, a non-default RoPE base and eps
LLAMA_UNTIED = dict(tie_embeddings=False)
GPT2 = dict(position="learned", norm="layernorm", mlp="gelu")
FAMILIES = {"llama-gqa": LLAMA, "llama-untied": LLAMA_UNTIED, "gpt2": GPT2}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    documents = [(STDLIB / name).read_text(encoding="utf-8") for name in TRAIN_MODULES]
    return Tokenizer(train_tokenizer(documents, TokenizerConfig(vocab_size=512, train_max_chars=300_000), seed=0))


@pytest.fixture(scope="module")
def real_text() -> str:
    return "".join((STDLIB / name).read_text(encoding="utf-8") for name in HELD_OUT_MODULES)


def tiny_gpt(vocab_size: int, seed: int = 0, **overrides) -> GPT:
    """A random tiny GPT whose norm weights are not all ones, so a swapped or dropped norm shows."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, max_seq_len=256, **overrides))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.normal_(1.0, 0.2)
    return model.eval()


def assert_close_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = ours.abs().max().item()
    assert scale > 0.1  # a model whose logits are all ~0 would pass anything
    assert (ours - theirs).abs().max().item() <= 1e-4 * scale


def load_exported(directory: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    return model.eval()


# --- export: parity ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_model_gives_our_logits_and_greedy_tokens(family, tokenizer, real_text, tmp_path):
    model = tiny_gpt(tokenizer.vocab_size, **FAMILIES[family])
    save_hf(model, tokenizer, tmp_path)
    theirs = load_exported(tmp_path)
    assert type(theirs).__name__ == ("GPT2LMHeadModel" if family == "gpt2" else "LlamaForCausalLM")

    ids = tokenizer.encode(real_text)
    batch = torch.tensor([ids[:250], ids[1000:1250]])  # (2, 250)
    with torch.no_grad():
        assert_close_logits(model(batch), theirs(batch).logits)

    prompts = [tokenizer.encode(text) for text in ("def f(x):\n    return", "import os\n", 'class A:\n    """')]
    ours = generate(model, prompts, max_new_tokens=24, sampling=Sampling(temperature=0), eos_id=None)
    for prompt, tokens in zip(prompts, ours.tokens):
        out = theirs.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=24,
            eos_token_id=None,
        )  # (1, prompt + 24)
        assert out[0, len(prompt) :].tolist() == tokens


def test_exported_config_and_files(tokenizer, tmp_path):
    model = tiny_gpt(tokenizer.vocab_size, **LLAMA)
    config, tensors = to_hf(model)
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == 1 and config["bos_token_id"] is None
    assert "lm_head.weight" not in tensors  # tied: transformers saves only the embedding
    save_hf(model, tokenizer, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer_config.json",
    }
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters["rope_theta"] == 500.0 and loaded.max_position_embeddings == 256


def test_own_safetensors_format_holds_the_state_dict_and_config(tokenizer, tmp_path):
    model = tiny_gpt(tokenizer.vocab_size)
    save_safetensors(model, tokenizer, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in tensors  # tied: stored once
    config = ModelConfig(**json.loads((tmp_path / "config.json").read_text()))
    again = GPT(config)
    again.load_state_dict({**tensors, "lm_head.weight": tensors["embed.tokens.weight"]})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert Tokenizer.load(tmp_path / "tokenizer.model").sha256 == tokenizer.sha256


# --- export: tokenizer ---------------------------------------------------------------------------


def test_hf_tokenizer_gives_our_ids_and_round_trips(tokenizer, real_text, tmp_path):
    save_hf_tokenizer(tokenizer, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert theirs.eos_token_id == tokenizer.eos_id and theirs.bos_token_id is None
    chunks = [real_text[i : i + 20_000] for i in range(0, len(real_text), 20_000)]
    for text in chunks + NON_ASCII_TEXTS:
        ids = theirs.encode(text, add_special_tokens=False)
        assert ids == tokenizer.encode(text) == theirs(text)["input_ids"]
        assert theirs.decode(ids) == text


def test_literal_sentencepiece_space_mark_is_the_known_difference(tokenizer, tmp_path):
    """We spell a literal U+2581 as its three byte tokens; an HF tokenizer reads it as a space.

    HF still decodes our ids to the exact text, so generated text is right; only HF's
    encoding of such text differs.
    """
    save_hf_tokenizer(tokenizer, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "a\u2581b"
    assert theirs.encode(text, add_special_tokens=False) != tokenizer.encode(text)
    assert theirs.decode(tokenizer.encode(text)) == text


# --- export: refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(position="alibi"), "model.position: 'alibi'"),
        (dict(norm="layernorm"), "model.norm: 'layernorm'"),
        (dict(mlp="gelu"), "model.mlp: 'gelu'"),
        (dict(GPT2, norm="rmsnorm"), "model.norm: 'rmsnorm'"),
        (dict(GPT2, mlp="swiglu"), "model.mlp: 'swiglu'"),
        (dict(GPT2, tie_embeddings=False), "model.tie_embeddings: False"),
        (dict(GPT2, n_kv_heads=2), "model.n_kv_heads: 2"),
    ],
)
def test_models_without_an_exact_hf_equivalent_are_refused(overrides, field, tokenizer, tmp_path):
    with pytest.raises(UserInputError) as refused:
        save_hf(tiny_gpt(tokenizer.vocab_size, **overrides), tokenizer, tmp_path / "out")
    assert str(refused.value).startswith(field) and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_tokenizer_directory_without_sentencepiece_model_is_refused(tokenizer, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(UserInputError, match=r"no tokenizer\.model"):
        hf_tokenizer_path(tmp_path)
    save_hf_tokenizer(tokenizer, tmp_path)
    assert hf_tokenizer_path(tmp_path) == tmp_path / "tokenizer.model"


def test_inexact_sentencepiece_model_is_refused(tmp_path):
    """A model with sentencepiece's defaults (NFKC, dummy prefix, collapsed spaces) loses text."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((STDLIB / "textwrap.py").read_text().splitlines()),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=300,
        minloglevel=2,
    )
    with pytest.raises(UserInputError, match=r"tokenizer\.model: tokenizer does not round-trip"):
        hf_tokenizer_path(tmp_path)


# --- import --------------------------------------------------------------------------------------


def tiny_hf_llama(tied: bool, vocab_size: int):
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=160,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=20000.0,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=1,
    )
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.normal_(1.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_llama_imports_exactly_and_exports_back_bit_for_bit(tied, tokenizer, real_text, tmp_path):
    theirs = tiny_hf_llama(tied, tokenizer.vocab_size)
    source = tmp_path / "hf"
    theirs.save_pretrained(source, max_shard_size="100KB")  # sharded: model.safetensors.index.json
    save_hf_tokenizer(tokenizer, source)

    cfg = read_hf_model_config(source)
    assert (cfg.n_kv_heads, cfg.ffn_hidden, cfg.tie_embeddings, cfg.rope_theta) == (2, 160, tied, 20000.0)
    ours = load_hf_weights(GPT(cfg), source).eval()
    assert Tokenizer.load(hf_tokenizer_path(source)).sha256 == tokenizer.sha256

    batch = torch.tensor([tokenizer.encode(real_text)[:200]])  # (1, 200)
    with torch.no_grad():
        assert_close_logits(ours(batch), theirs(batch).logits)

    save_hf(ours, tokenizer, tmp_path / "back")
    original = {name: tensor for name, tensor in theirs.state_dict().items() if not (tied and name == "lm_head.weight")}
    exported = load_file(tmp_path / "back" / "model.safetensors")
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[name], original[name]) for name in original)
    assert read_hf_model_config(tmp_path / "back") == cfg


@pytest.mark.parametrize(
    "change, key",
    [
        ({"model_type": "mistral"}, "model_type='mistral'"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "architectures="),
        (
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
            "rope_parameters.rope_type='linear'",
        ),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type='dynamic'"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"mlp_bias": True}, "mlp_bias=True"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"head_dim": 32}, "head_dim=32"),
        ({"num_key_value_heads": 3}, "num_key_value_heads=3"),
    ],
)
def test_llama_configs_we_cannot_compute_exactly_are_refused(change, key, tmp_path):
    config = tiny_hf_llama(True, 512).config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserInputError) as refused:
        read_hf_model_config(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: {key}") and "\n" not in message


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    theirs = tiny_hf_llama(False, 512)
    theirs.save_pretrained(tmp_path)
    model = GPT(read_hf_model_config(tmp_path))
    tensors = load_file(tmp_path / "model.safetensors")
    for change, message in (
        (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "'model.layers.1.mlp.up_proj.weight' is missing"),
        (
            lambda t: t.update({"model.layers.2.mlp.up_proj.weight": t["model.norm.weight"].clone()}),
            "unexpected tensor",
        ),
        (
            lambda t: t.update({"model.norm.weight": t["model.norm.weight"][:8]}),
            r"has shape \[8\], config.json says \[64\]",
        ),
    ):
        broken = dict(tensors)
        change(broken)
        save_file(broken, tmp_path / "model.safetensors")
        with pytest.raises(UserInputError, match=message):
            load_hf_weights(model, tmp_path)
