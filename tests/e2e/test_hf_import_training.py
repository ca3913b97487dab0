"""`model.init_from=hf:DIR`: pretraining starts from a Hugging Face Llama checkpoint, and goes back.

The Llama model (grouped-query attention) is built and saved by transformers inside the
test, with the tiny dataset's sentencepiece tokenizer; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from orchestrator.stages.pretrain import PRETRAIN
from tests.helpers import run_tiny, step_metrics
from workloads.checkpoints.loading import load_checkpoint
from workloads.data.loader import PackedDataset
from workloads.data.order import stream_indices
from workloads.hf_interop import save_hf, save_hf_tokenizer
from workloads.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_dir(tiny_dataset, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=None,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    directory = tmp_path_factory.mktemp("llama")
    model.save_pretrained(directory)
    save_hf_tokenizer(Tokenizer.load(tiny_dataset / "tokenizer.model"), directory)
    return directory, model


def test_the_imported_config_sets_shape_and_tokenizer(llama_dir, tiny_dataset):
    directory, _ = llama_dir
    cfg = PRETRAIN.parse(
        [
            "--config",
            "tiny",
            f"--data.corpus={tiny_dataset}",
            f"--model.init_from=hf:{directory}",
            "--model.attention_mask=causal",
        ]
    )
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.n_kv_heads, cfg.model.ffn_hidden) == (64, 4, 2, 192)
    assert cfg.model.init_from == f"hf:{directory.resolve()}" and cfg.model.attention_mask == "causal"
    assert cfg.tokenizer.model_path == str(directory.resolve() / "tokenizer.model")


def test_pretraining_starts_from_the_imported_weights_and_exports_back(llama_dir, tiny_dataset, tmp_path, shared_ray):
    directory, hf_model = llama_dir
    # Plain causal attention, as transformers computes it, so step 1's loss can be checked against it.
    final = run_tiny(
        tiny_dataset,
        tmp_path,
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--run.name=imported",
        f"--model.init_from=hf:{directory}",
        "--model.attention_mask=causal",
        "--train.max_steps=6",
        "--train.eval_interval=6",
        "--train.checkpoint_interval=0",
    )
    losses = step_metrics(tmp_path / "imported")
    train = PackedDataset(tiny_dataset, "train")
    tokens, _ = train.get(stream_indices(train.num_samples, 0, 8, seed=0))  # the first global batch
    with torch.no_grad():  # every position predicts the next token, as in training
        logits = hf_model(tokens[:, :-1]).logits  # (8, 64, 512)
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), tokens[:, 1:].reshape(-1).long())
    assert losses[1] == pytest.approx(expected.item(), rel=1e-5)
    assert losses[6] < losses[1]

    trained = load_checkpoint(final["checkpoint"])
    assert trained.config.n_kv_heads == 2
    exported = save_hf(trained.model, trained.tokenizer, tmp_path / "exported")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        ours, theirs = trained.model(tokens[:2, :-1]), reloaded(tokens[:2, :-1]).logits
    assert (ours - theirs).abs().max() <= 1e-4 * ours.abs().max()
