"""The generate section: KV-cache decoding against recomputing every step and against transformers' `generate`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.benchmarks.harness import BENCH_CPUS, THROUGHPUT_RECIPE, say
from orchestrator.stages.pretrain import PRETRAIN
from workloads.generation import Sampling, generate
from workloads.hf_interop import save_hf_model
from workloads.model import GPT

GENERATE_BATCH, GENERATE_PROMPT_TOKENS, GENERATE_NEW_TOKENS = 8, 32, 192  # 32 + 192 fit the recipe's 256-token context


def measure_generate(
    workdir: Path,
    model_cfg=None,
    batch: int = GENERATE_BATCH,
    prompt_tokens: int = GENERATE_PROMPT_TOKENS,
    new_tokens: int = GENERATE_NEW_TOKENS,
    threads: int = BENCH_CPUS,
    repeats: int = 3,
) -> dict[str, Any]:
    """Greedy tokens/s of `workloads.generation.generate` with and without its KV cache, and of
    transformers' `generate` on the same weights exported with `workloads.hf_interop`.

    Same seeded random model (the default recipe's shape unless `model_cfg` is given), the
    same fixed random prompts and thread count on every side; end-of-document never stops a
    row, so every side makes exactly batch x new_tokens tokens. Each side is warmed up once;
    our KV-cache side and transformers alternate `repeats` times and each keeps its fastest
    run, so that a machine busy for a while slows both. The uncached side, which reruns the
    whole sequence every step, is slow enough to run once.
    """
    import transformers  # transformers: the optional [hf] extra, needed by this section alone

    cfg = model_cfg or PRETRAIN.parse(["--config", THROUGHPUT_RECIPE]).model
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_tokens), generator=torch.Generator().manual_seed(0))
        theirs = transformers.AutoModelForCausalLM.from_pretrained(save_hf_model(model, workdir / "generate-hf")).eval()
        greedy = Sampling(temperature=0)

        def ours(use_cache: bool, count: int = new_tokens):
            return generate(model, prompts.tolist(), count, greedy, eos_id=None, use_cache=use_cache)

        def transformers_generate(count: int = new_tokens) -> tuple[torch.Tensor, float]:
            started = time.perf_counter()
            with torch.no_grad():
                out = theirs.generate(
                    prompts,
                    attention_mask=torch.ones_like(prompts),
                    do_sample=False,
                    max_new_tokens=count,
                    eos_token_id=None,
                )  # (B, prompt + count)
            return out[:, prompt_tokens:], time.perf_counter() - started

        for warm_up in (lambda: ours(True, 8), lambda: ours(False, 8), lambda: transformers_generate(8)):
            warm_up()  # first-call costs (allocator, lazy imports) on every side
        cached, hf_seconds = [], []
        for _ in range(repeats):
            cached.append(ours(True))
            hf_tokens, seconds = transformers_generate()
            hf_seconds.append(seconds)
        uncached = ours(False)
    finally:
        torch.set_num_threads(previous_threads)
    if hf_tokens.shape != (batch, new_tokens):
        raise RuntimeError(f"transformers generated {tuple(hf_tokens.shape)} tokens, expected {(batch, new_tokens)}")
    cache_rate = max(g.tokens_per_s for g in cached)
    hf_rate = batch * new_tokens / min(hf_seconds)
    same = sum(a == b for a, b in zip(cached[0].tokens, hf_tokens.tolist()))
    return {
        "generate_cache_speedup": cache_rate / uncached.tokens_per_s,
        "generate_vs_transformers": cache_rate / hf_rate,
        "details": {
            "model": f"{cfg.n_layers} x {cfg.d_model}, {cfg.n_heads} heads, vocab {cfg.vocab_size}",
            "batch": batch,
            "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens,
            "threads": threads,
            "cache_tokens_per_s": [g.tokens_per_s for g in cached],
            "no_cache_tokens_per_s": uncached.tokens_per_s,
            "transformers_tokens_per_s": [batch * new_tokens / s for s in hf_seconds],
            "transformers_version": transformers.__version__,
            # Rows whose greedy continuation matched transformers' token for token (float rounding may split ties).
            "rows_equal_to_transformers": f"{same}/{batch}",
        },
    }


def run(bench) -> None:
    """The generate section: generate_cache_speedup and generate_vs_transformers."""
    say(
        f"generate: greedy, batch {GENERATE_BATCH}, {GENERATE_PROMPT_TOKENS}-token prompts, "
        f"{GENERATE_NEW_TOKENS} new tokens: KV cache vs none vs transformers"
    )
    measured = measure_generate(bench.workdir)
    bench.report.update({k: measured[k] for k in ("generate_cache_speedup", "generate_vs_transformers")})
    bench.details["generate"] = shown = measured["details"]
    say(
        f"generate: {max(shown['cache_tokens_per_s']):,.0f} tok/s with the cache, "
        f"{shown['no_cache_tokens_per_s']:,.0f} without, transformers {max(shown['transformers_tokens_per_s']):,.0f}"
    )
