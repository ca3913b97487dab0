"""The throughput section: the real path (Ray Train + DeepSpeed) against bare loops of the same model and of
GPT-2's layout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from orchestrator.benchmarks.harness import BENCH_CPUS, WARMUP_STEPS, say, step_times_from_metrics, throughput_args
from orchestrator.stages.pretrain import PRETRAIN, PretrainConfig
from workloads.metrics_log import METRICS_FILE
from workloads.reference_loop import bare_loop, steady_tokens_per_s

# The throughput section's real path and its own bare loop compile the blocks: on CPU that fuses the
# elementwise work of RMSNorm, RoPE and SwiGLU (about +20% tokens/s on a 2-core machine, README). The first
# step compiles and is among the excluded warm-up steps. first_step_s launches the recipe as it is.
COMPILED = ("--parallel.compile_blocks=true",)
# GPT-2's layout (nanoGPT with bias=False) as overrides of the throughput recipe: the reference loop of
# pretrain_vs_gpt2_bare is `bare_loop_of` this config.
GPT2_LAYOUT = (
    "--model.mlp=gelu",
    "--model.norm=layernorm",
    "--model.position=learned",
    "--model.attention_mask=causal",
    "--parallel.compile_blocks=false",
)  # nanoGPT's reference runs eager ("no compile")


def bare_loop_of(cfg: PretrainConfig, dataset_dir: Path, steps: int, threads: int) -> list[float]:
    """`workloads.reference_loop.bare_loop` on a pretrain config's model, training, compile and data order."""
    return bare_loop(
        cfg.model,
        cfg.train,
        dataset_dir,
        steps,
        threads,
        compiled=cfg.parallel.compile_blocks,
        shuffle_seed=cfg.data.shuffle_seed,
    )


def bare_loop_in_ray_worker(cfg: PretrainConfig, dataset_dir: Path, steps: int, threads: int) -> list[float]:
    """`bare_loop_of` as a Ray task holding as many CPUs as the training worker.

    A Ray worker process differs from this one in what Ray gives every worker:
    its environment (OMP_NUM_THREADS = the CPUs held) and its scheduling priority
    (Ray starts workers at niceness 15, so any other busy process on the machine
    takes the CPU first). Comparing the two bare loops separates those effects
    from the cost of Ray Train and DeepSpeed.
    """
    task = ray.remote(num_cpus=threads)(bare_loop_of)
    return ray.get(task.remote(cfg, dataset_dir, steps, threads))


def measure_throughput(dataset_dir: Path, workdir: Path, steps: int) -> dict[str, Any]:
    """Bare loops of our model and of GPT-2's layout, the real path, the bare loop in a Ray worker, both bare
    loops again.

    Each ratio divides by the mean of its bare loop's two runs here, one before and one
    after the real path, so that a machine getting busier or quieter during the
    measurement shows as a gap between them; the second runs go in the opposite order,
    so that a steady drift moves both means alike.
    """
    total = steps + WARMUP_STEPS
    args = [*throughput_args(dataset_dir, workdir, "bench-throughput", total), *COMPILED]
    cfg = PRETRAIN.parse(args)
    gpt2 = PRETRAIN.parse([*args, *GPT2_LAYOUT])
    tokens_step = cfg.train.resolved_global_batch(1) * cfg.data.seq_len

    def bare(where: str, loop, config: PretrainConfig = cfg) -> float:
        say(f"throughput: bare PyTorch loop {where}, {total} steps")
        rate = steady_tokens_per_s(loop(config, dataset_dir, total, BENCH_CPUS), tokens_step, WARMUP_STEPS)
        say(f"throughput: bare loop {where}: {rate:,.0f} tok/s")
        return rate

    bare_before = bare("in this process", bare_loop_of)
    gpt2_before = bare("in GPT-2's layout", bare_loop_of, gpt2)
    say(f"throughput: real path, {total} steps (Ray Train + DeepSpeed ZeRO {cfg.deepspeed.zero_stage}, 1 worker)")
    started = time.perf_counter()
    PRETRAIN.run(cfg)
    pretrain_wall = time.perf_counter() - started
    full = steady_tokens_per_s(step_times_from_metrics(cfg.run.run_dir() / METRICS_FILE), tokens_step, WARMUP_STEPS)
    say(f"throughput: real path: {full:,.0f} tok/s")
    bare_ray = bare("in a Ray worker process", bare_loop_in_ray_worker)
    gpt2_after = bare("in GPT-2's layout, again", bare_loop_of, gpt2)
    bare_after = bare("in this process, again", bare_loop_of)
    bare_mean = (bare_before + bare_after) / 2
    gpt2_mean = (gpt2_before + gpt2_after) / 2
    return {
        "pretrain_vs_bare_ratio": full / bare_mean,
        "pretrain_vs_gpt2_bare": full / gpt2_mean,
        "bare_micro_batches_per_s": bare_mean / (cfg.train.micro_batch_size * cfg.data.seq_len),
        "details": {
            "model": f"{cfg.model.n_layers} x {cfg.model.d_model}, vocab {cfg.model.vocab_size}",
            "micro_batch": f"{cfg.train.micro_batch_size} x {cfg.data.seq_len} tokens",
            "grad_accum_steps": cfg.train.grad_accum_steps,
            "threads": BENCH_CPUS,
            "measured_steps": steps,
            "warmup_steps_excluded": WARMUP_STEPS,
            "pretrain_tokens_per_s": full,
            "bare_tokens_per_s": [bare_before, bare_after],
            # How much the same loop's speed moved while the real path ran: a busy machine shows here.
            "bare_spread": abs(bare_before - bare_after) / bare_mean,
            "bare_in_ray_worker_tokens_per_s": bare_ray,
            "pretrain_vs_bare_in_ray_worker": full / bare_ray,
            "gpt2_bare_tokens_per_s": [gpt2_before, gpt2_after],
            "gpt2_layout": " ".join(GPT2_LAYOUT),
            "bare_vs_gpt2_bare": bare_mean / gpt2_mean,
            "pretrain_wall_s": pretrain_wall,
        },
    }


def run(bench) -> None:
    """The throughput section: pretrain_vs_bare_ratio, pretrain_vs_gpt2_bare (and loader_vs_consumption)."""
    measured = measure_throughput(bench.dataset(), bench.workdir, bench.args.steps)
    report = bench.report
    report["pretrain_vs_bare_ratio"] = measured["pretrain_vs_bare_ratio"]
    report["pretrain_vs_gpt2_bare"] = measured["pretrain_vs_gpt2_bare"]
    bench.details["throughput"] = {
        **measured["details"],
        "bare_micro_batches_per_s": measured["bare_micro_batches_per_s"],
    }
    if "loader" in bench.details:
        report["loader_vs_consumption"] = (
            bench.details["loader"]["micro_batches_per_s"] / measured["bare_micro_batches_per_s"]
        )
    say(
        f"throughput: ratio {report['pretrain_vs_bare_ratio']:.3f} to the bare loop, "
        f"{report['pretrain_vs_gpt2_bare']:.3f} to GPT-2's layout"
    )
