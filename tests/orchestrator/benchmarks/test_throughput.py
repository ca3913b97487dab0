"""The throughput section's configs and step times."""

from __future__ import annotations

import json

import pytest

from orchestrator.benchmarks.harness import step_times_from_metrics, throughput_args
from orchestrator.benchmarks.throughput import COMPILED, GPT2_LAYOUT, bare_loop_of
from orchestrator.stages.pretrain import PRETRAIN
from tests.helpers import write_random_dataset
from workloads.reference_loop import steady_tokens_per_s

SEQ_LEN = 16
VOCAB = 512  # the tiny recipe's


@pytest.fixture
def dataset_dir(tmp_path):
    return write_random_dataset(tmp_path, SEQ_LEN, VOCAB)


def test_gpt2_reference_is_the_throughput_recipe_in_gpt2s_layout_uncompiled(dataset_dir):
    from workloads.model import matmul_parameters

    args = [*throughput_args(dataset_dir, dataset_dir.parent, "bench", steps=5), *COMPILED]
    ours, gpt2 = PRETRAIN.parse(args), PRETRAIN.parse([*args, *GPT2_LAYOUT])
    # The real path and its own bare loop compile the blocks; nanoGPT's reference runs eager.
    assert (ours.parallel.compile_blocks, gpt2.parallel.compile_blocks) == (True, False)
    layout = ("mlp", "norm", "position", "attention_mask")
    assert [getattr(gpt2.model, name) for name in layout] == ["gelu", "layernorm", "learned", "causal"]
    shape = ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "tie_embeddings", "dropout")
    assert [getattr(gpt2.model, name) for name in shape] == [getattr(ours.model, name) for name in shape]
    assert (gpt2.train, gpt2.data) == (ours.train, ours.data)
    assert matmul_parameters(gpt2.model) == matmul_parameters(ours.model)  # GELU's 4 x d_model = SwiGLU's 3 matrices
    stamps = bare_loop_of(PRETRAIN.parse(["--config", "tiny", *GPT2_LAYOUT]), dataset_dir, steps=2, threads=1)
    assert len(stamps) == 3


def test_step_times_come_from_the_workers_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [
        {"step": 1, "time": 10.0, "train/loss": 5.0},
        {"step": 2, "time": 10.5, "train/loss": 4.0},
        {"step": 2, "time": 11.0, "eval/loss": 4.0},
        {"step": 3, "time": 12.0, "train/loss": 3.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stamps = step_times_from_metrics(path)
    assert stamps[1:] == [10.0, 10.5, 12.0]
    assert steady_tokens_per_s(stamps, 100, warmup=1) == pytest.approx(200 / 2.0)
