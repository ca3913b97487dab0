"""The benchmark's cheap parts: measurements on a small dataset, FLOP-budget arithmetic, the byte split.

Speed goals live in the benchmark itself; nothing here depends on how fast the machine is.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orchestrator import bench
from orchestrator.bench_quality import NANOGPT_FLOPS, split_bytes, steps_for_budget, training_flops
from orchestrator.pretrain import parse_cli
from workloads.data.shards import FORMAT_VERSION, write_manifest, write_shards
from workloads.errors import UserInputError

SEQ_LEN = 16
VOCAB = 512  # the tiny recipe's


@pytest.fixture
def dataset_dir(tmp_path):
    """A prepared-dataset directory of random samples, written the way prepare writes them."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", 40), ("val", 8)):
        tokens = rng.integers(0, VOCAB, size=(count, SEQ_LEN + 1), dtype=np.int32)
        segments = np.sort(rng.integers(0, 2, size=(count, SEQ_LEN + 1), dtype=np.int32), axis=1)
        splits[split] = {"num_samples": count, "shards": write_shards(tmp_path, split, tokens, segments, 16)}
    write_manifest(tmp_path, {"format_version": FORMAT_VERSION, "seq_len": SEQ_LEN, "splits": splits})
    return tmp_path


def test_split_keeps_exact_bytes_at_nanogpts_cut(tmp_path):
    text = bytes(range(32, 127)) * 11  # 1045 ASCII bytes
    source = tmp_path / "corpus.txt"
    source.write_bytes(text)
    train, val = split_bytes(source, tmp_path / "split")
    assert train.read_bytes() + val.read_bytes() == text
    assert len(train.read_bytes()) == int(len(text) * 0.9)


def test_split_never_cuts_inside_a_utf8_character(tmp_path):
    text = ("a" * 89 + "\u00e9\u4e16" + "b" * 9).encode("utf-8")  # the 90% cut falls inside the 3-byte character
    source = tmp_path / "corpus.txt"
    source.write_bytes(text)
    train, val = split_bytes(source, tmp_path / "split")
    assert train.read_bytes() + val.read_bytes() == text
    assert train.read_bytes().decode("utf-8").endswith("\u00e9") and val.read_bytes().decode("utf-8").startswith("\u4e16")


def test_split_refuses_a_file_too_small(tmp_path):
    (tmp_path / "one.txt").write_bytes(b"x")
    with pytest.raises(UserInputError, match="too small"):
        split_bytes(tmp_path / "one.txt", tmp_path / "split")


def test_flop_budget_gives_the_most_steps_that_fit():
    cfg = parse_cli(["--config", "quality"])
    steps = steps_for_budget(cfg, NANOGPT_FLOPS)
    assert training_flops(cfg, steps) <= NANOGPT_FLOPS < training_flops(cfg, steps + 1)
    assert steps == cfg.train.max_steps  # the recipe's own max_steps is the default budget's (see its header)
    with pytest.raises(UserInputError, match="less than one step"):
        steps_for_budget(cfg, 1e6)


def test_loader_and_memcpy_measurements(dataset_dir):
    loader = bench.measure_loader(dataset_dir, micro_batch_size=4, seconds=0.05, micro_batches=30)
    assert loader["bytes_per_micro_batch"] == 2 * 4 * (SEQ_LEN + 1) * 4  # tokens and segments, int32
    assert loader["bytes_per_pass"] == 30 * loader["bytes_per_micro_batch"]
    assert loader["micro_batches_per_s"] > 0
    assert loader["bytes_per_s"] == pytest.approx(loader["micro_batches_per_s"] * loader["bytes_per_micro_batch"])
    assert bench.measure_memcpy(loader["bytes_per_pass"], seconds=0.01) > 0


def test_bare_loop_trains_and_times_every_step(dataset_dir):
    cfg = parse_cli(["--config", "tiny", "--train.grad_accum_steps=2"])
    threads = torch.get_num_threads()
    stamps = bench.bare_loop(cfg, dataset_dir, steps=4, threads=1)
    assert len(stamps) == 5 and all(b > a for a, b in zip(stamps, stamps[1:]))
    assert torch.get_num_threads() == threads
    tokens_per_s = bench.steady_tokens_per_s(stamps, tokens_per_step=8 * SEQ_LEN, warmup=1)
    assert tokens_per_s == pytest.approx(3 * 8 * SEQ_LEN / (stamps[4] - stamps[1]))


def test_gpt2_reference_is_the_throughput_recipe_in_gpt2s_layout_uncompiled(dataset_dir):
    from workloads.model import matmul_parameters

    args = [*bench.throughput_args(dataset_dir, dataset_dir.parent, "bench", steps=5), *bench.COMPILED]
    ours, gpt2 = parse_cli(args), parse_cli([*args, *bench.GPT2_LAYOUT])
    # The real path and its own bare loop compile the blocks; nanoGPT's reference runs eager.
    assert (ours.parallel.compile_blocks, gpt2.parallel.compile_blocks) == (True, False)
    layout = ("mlp", "norm", "position", "attention_mask")
    assert [getattr(gpt2.model, name) for name in layout] == ["gelu", "layernorm", "learned", "causal"]
    shape = ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "tie_embeddings", "dropout")
    assert [getattr(gpt2.model, name) for name in shape] == [getattr(ours.model, name) for name in shape]
    assert (gpt2.train, gpt2.data) == (ours.train, ours.data)
    assert matmul_parameters(gpt2.model) == matmul_parameters(ours.model)  # GELU's 4 x d_model = SwiGLU's 3 matrices
    stamps = bench.bare_loop(parse_cli(["--config", "tiny", *bench.GPT2_LAYOUT]), dataset_dir, steps=2, threads=1)
    assert len(stamps) == 3


def test_step_times_come_from_the_workers_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": 1, "time": 10.0, "train/loss": 5.0}, {"step": 2, "time": 10.5, "train/loss": 4.0},
               {"step": 2, "time": 11.0, "eval/loss": 4.0}, {"step": 3, "time": 12.0, "train/loss": 3.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stamps = bench.step_times_from_metrics(path)
    assert stamps[1:] == [10.0, 10.5, 12.0]
    assert bench.steady_tokens_per_s(stamps, 100, warmup=1) == pytest.approx(200 / 2.0)


def test_device_steps_report_throughput_and_mfu():
    # The --gpu measurement, run on the CPU with the tiny recipe: same code but CUDA calls.
    cfg = parse_cli(["--config", "tiny", "--train.grad_accum_steps=1"])
    result = bench.train_steps_on_device(cfg, "cpu", steps=2, warmup=1)
    assert result["tokens_per_s"] > 0 and result["mfu"] > 0
    assert np.isfinite(result["final_loss"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_section_is_skipped_without_cuda():
    assert bench.gpu_bench() == {"skipped": "no CUDA device is present"}


def test_report_table_and_goals():
    report = {"pretrain_vs_bare_ratio": 0.97, "first_step_s": 20.0, "quality_flops": 7.89e12,
              "gpu": {"skipped": "no CUDA device is present"}, "details": {}}
    assert bench.meets_goal("pretrain_vs_bare_ratio", 0.97) and not bench.meets_goal("first_step_s", 20.0)
    assert bench.meets_goal("quality_flops", 1.0) is None
    lines = bench.table(report).splitlines()
    assert any(line.startswith("pretrain_vs_bare_ratio") and line.endswith("yes") for line in lines)
    assert any(line.startswith("first_step_s") and line.endswith("NO") for line in lines)
    assert any("skipped" in line for line in lines)
    json.dumps(report)


def test_unknown_section_fails_before_anything_runs():
    with pytest.raises(UserInputError, match="unknown section"):
        bench.main(["--only", "nonsense"])
    with pytest.raises(UserInputError, match="needs --quality"):
        bench.main(["--only", "quality"])


def test_busy_machine_is_reported():
    quiet = {"cpus_on_machine": 2, "load_average_at_start": [0.1, 0.2, 0.3],
             "details": {"throughput": {"bare_spread": 0.01}}}
    assert bench.busy_machine_warnings(quiet) == []
    busy = {"cpus_on_machine": 2, "load_average_at_start": [3.0, 2.0, 1.0],
            "details": {"throughput": {"bare_spread": 0.2}}}
    assert len(bench.busy_machine_warnings(busy)) == 2


def test_generation_bench_compares_the_same_greedy_tokens_with_and_without_cache_and_transformers(tmp_path):
    from workloads.model import ModelConfig

    tiny = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    measured = bench.measure_generate(tmp_path, tiny, batch=2, prompt_tokens=4, new_tokens=8, repeats=1)
    assert measured["details"]["rows_equal_to_transformers"] == "2/2"
    assert measured["generate_cache_speedup"] > 0 and measured["generate_vs_transformers"] > 0
