"""The generate section on a tiny model: the same greedy tokens with and without the cache and in transformers."""

from __future__ import annotations

from orchestrator.benchmarks.generation import measure_generate


def test_generation_bench_compares_the_same_greedy_tokens_with_and_without_cache_and_transformers(tmp_path):
    from workloads.model import ModelConfig

    tiny = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    measured = measure_generate(tmp_path, tiny, batch=2, prompt_tokens=4, new_tokens=8, repeats=1)
    assert measured["details"]["rows_equal_to_transformers"] == "2/2"
    assert measured["generate_cache_speedup"] > 0 and measured["generate_vs_transformers"] > 0
