"""The gpu section: tokens/s, MFU and peak memory of the GPU recipes' models on one CUDA device, bf16."""

from __future__ import annotations

from typing import Any

import torch

from orchestrator.benchmarks.harness import say
from orchestrator.stages.pretrain import PRETRAIN
from workloads.reference_loop import train_steps_on_device

GPU_RECIPES = ("gpt-125m-gpu", "gpt-1b-gpu")


def gpu_bench(steps: int = 10) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device is present"}
    results: dict[str, Any] = {"device": torch.cuda.get_device_name()}
    for recipe in GPU_RECIPES:
        say(f"gpu: {recipe}, {steps} steps")
        cfg = PRETRAIN.parse(["--config", recipe])
        results[recipe] = train_steps_on_device(cfg.model, cfg.train, cfg.data.seq_len, "cuda", steps)
        torch.cuda.empty_cache()
        say(
            f"gpu: {recipe}: {results[recipe]['tokens_per_s']:,.0f} tok/s, MFU {100 * results[recipe]['mfu']:.1f}%, "
            f"peak memory {results[recipe]['peak_memory_gib']:.1f} GiB"
        )
    return results


def run(bench) -> None:
    """The gpu section: the GPU recipes' models on one CUDA device (skipped, with the reason, without one)."""
    bench.report["gpu"] = gpu_bench()
    if "skipped" in bench.report["gpu"]:
        say(f"gpu: skipped, {bench.report['gpu']['skipped']}")
