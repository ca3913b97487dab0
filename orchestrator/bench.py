"""`python -m orchestrator.bench`: how fast, and how well, the pretrain path trains.

Each ratio compares two things measured side by side in the same run on the
same machine, so that a slow or busy machine moves both sides:

  pretrain_vs_bare_ratio  steady-state tokens/s of the real path (the default recipe with
                          --parallel.compile_blocks=true: Ray Train + DeepSpeed ZeRO 1, one worker, warm-up
                          steps, which compile, excluded) / a bare single-process PyTorch loop with the same
                          model, compiled blocks, batch, data, threads and optimizer (torch AdamW, same param
                          groups, fp32)
  pretrain_vs_gpt2_bare   steady-state tokens/s of that real path / the bare loop of the same shape, tokens and
                          threads in GPT-2's layout, as nanoGPT's train.py trains (GELU MLP, LayerNorm, learned
                          positions, attention across documents with SDPA's is_causal; no biases, fp32, eager,
                          torch AdamW): the real path keeps per-document attention, RoPE, SwiGLU and RMSNorm,
                          Ray Train and DeepSpeed, and gains torch.compile of its blocks
  loader_vs_consumption   micro-batches/s `PackedDataset.get` delivers / micro-batches/s training consumes
  loader_vs_memcpy        bytes/s `PackedDataset.get` delivers in passes over 2,048 consecutive shuffled
                          micro-batches (67 MB of int32 per pass with the default recipe) / bytes/s of a
                          numpy copy of one buffer of a pass's size into another, once per repetition
  prepare_driver_rss_growth  peak RSS of the `python -m orchestrator.prepare` process on a 10x larger corpus
                          (about 120 MB) / on the embedded corpus (orchestrator.bench_prepare)
  prepare_vs_single_core  prepare's tokens/s on that 120 MB corpus after its first 10% / (cores x one process's
                          sentencepiece encode of the same text)
  first_step_s            launch of `python -m orchestrator.pretrain` (dataset prepared) to its first step line,
                          cold: a fresh process and a fresh local Ray, DeepSpeed's CPU ops already built (the
                          lower of 2 runs); the first run, which builds the ops, is reported as first_step_build_s
  generate_cache_speedup  greedy generation tokens/s with the KV cache / without it (the default recipe's model,
                          batch 8, 32-token prompts, 192 new tokens, 2 threads)
  generate_vs_transformers  the same KV-cache generation / transformers' `generate` on the model exported to it
  sweep_trial_vs_pretrain  steady-state tokens/s of a scaling-law sweep's longest trial, trained while the
                          sweep fills the machine / the same trial config run alone with `orchestrator.pretrain`
  sweep_utilization       that sweep's CPU-seconds of trial training steps / (wall x cluster CPUs)
  rl_generation_share     share of a GRPO iteration spent generating (the grpo tiny recipe, separated mode,
                          from a 30-step tiny pretrain checkpoint; iterations after the first), reported
  rl_sync_s               seconds to put the default recipe's policy weights in the object store and load them
                          into 2 rollout actors (median of 5), reported
  --quality TEXTFILE      validation bits per byte within nanoGPT's FLOP budget (orchestrator.bench_quality)
  --gpu                   tokens/s, MFU and peak memory of the GPU recipes' models on one GPU, bf16

    python -m orchestrator.bench [--out bench.json] [--workdir DIR] [--quality shakespeare.txt] [--gpu]

Runs, datasets and the MLflow database go to a temporary directory unless
--workdir is given. Arguments of the form --section.field=value override the
quality recipe (for tuning it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# orchestrator.pretrain sets Ray Train's environment defaults (orchestrator.ray_runtime):
# it must be imported before this process starts Ray, whose workers inherit the environment.
from orchestrator.bench_prepare import SCALE, measure_prepare
from orchestrator.bench_quality import NANOGPT_BPB, NANOGPT_FLOPS, run_quality
from orchestrator.pretrain import parse_cli, pretrain
from orchestrator.pretrain_config import PretrainConfig
from workloads.errors import UserInputError
from workloads.metrics_log import METRICS_FILE, read_metrics

BENCH_CPUS = 2  # the machine this bench is calibrated for: one worker of 2 CPUs, 2 torch threads
THROUGHPUT_RECIPE = "default"
WARMUP_STEPS = 3  # steps left out of steady-state throughput (allocator, caches, first-call costs)
# The throughput section's real path and its own bare loop compile the blocks: on CPU that fuses the
# elementwise work of RMSNorm, RoPE and SwiGLU (about +20% tokens/s on a 2-core machine, README). The first
# step compiles and is among the excluded warm-up steps. first_step_s launches the recipe as it is.
COMPILED = ("--parallel.compile_blocks=true",)
# GPT-2's layout (nanoGPT with bias=False) as overrides of the throughput recipe: the reference loop of
# pretrain_vs_gpt2_bare is `bare_loop` on this config.
GPT2_LAYOUT = ("--model.mlp=gelu", "--model.norm=layernorm", "--model.position=learned", "--model.attention_mask=causal",
               "--parallel.compile_blocks=false")  # nanoGPT's reference runs eager ("no compile")
# Micro-batches per loader pass: 2,048 x 16 samples x 257 tokens x 2 columns x 4 bytes = 67 MB for the
# default recipe, twice the last-level cache of the machine this bench is calibrated for.
LOADER_MICRO_BATCHES = 2048
GPU_RECIPES = ("gpt-125m-gpu", "gpt-1b-gpu")
GENERATE_BATCH, GENERATE_PROMPT_TOKENS, GENERATE_NEW_TOKENS = 8, 32, 192  # 32 + 192 fit the recipe's 256-token context
# The sweep measured: the cpu sweep recipe cut to 2 budgets x 3 sizes (6 trials of 520-2790 steps,
# 3 sizes at 1e12 and 2e12 FLOPs), no verification run (it trains alone, after the grid), no bootstrap.
SWEEP_RECIPE = "cpu"
SWEEP_OVERRIDES = ("--sweep.budgets=[1.0e+12, 2.0e+12]", "--sweep.sizes_per_budget=3", "--sweep.verify=false",
                   "--sweep.bootstrap=0")

# key: (comparison the measured value must pass, goal)
GOALS = {
    "pretrain_vs_bare_ratio": (">=", 0.95),
    "pretrain_vs_gpt2_bare": (">=", 0.95),
    "loader_vs_consumption": (">=", 50.0),
    "loader_vs_memcpy": (">=", 0.5),
    "prepare_vs_single_core": (">=", 0.8),
    "prepare_driver_rss_growth": ("<=", 1.2),
    "first_step_s": ("<=", 15.0),
    "generate_cache_speedup": (">=", 5.0),
    "generate_vs_transformers": (">=", 1.0),
    "sweep_trial_vs_pretrain": (">=", 0.9),
    "sweep_utilization": (">=", 0.7),
    "quality_bpb": ("<", 2.72),  # beat nanoGPT's baby GPT (orchestrator.bench_quality)
}
_COMPARE = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}
REPORTED = ("rl_generation_share", "rl_sync_s")  # measured and shown, no goal
RL_ITERATIONS = 6
SECTIONS = ("prepare", "loader", "throughput", "quality", "first_step", "generate", "sweep", "rl", "gpu")


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


# ---------------------------------------------------------------------------
# Ray and configs
# ---------------------------------------------------------------------------

def start_ray() -> None:
    """One local Ray for the in-process parts, unless this process already has one."""
    import ray

    if not ray.is_initialized():
        # address="local": a new instance even where another cluster runs on this machine.
        ray.init(address="local", num_cpus=BENCH_CPUS, log_to_driver=True)


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def throughput_args(dataset_dir: Path, workdir: Path, name: str, steps: int) -> list[str]:
    """The pretrain command line of the default recipe on the bench's prepared dataset."""
    return [
        "--config", THROUGHPUT_RECIPE,
        f"--data.corpus={dataset_dir}",
        "--scaling.num_workers=1",
        f"--scaling.cpus_per_worker={BENCH_CPUS}",
        "--deepspeed.zero_stage=1",
        f"--train.max_steps={steps}",
        f"--train.eval_interval={steps}",
        "--train.eval_samples=16",  # the final evaluation is not measured: keep it short
        "--train.checkpoint_interval=0",
        f"--run.output_dir={workdir / 'runs'}",
        f"--run.name={name}",
        "--run.fresh=true",
        f"--tracking.uri={tracking_uri(workdir)}",
        "--tracking.experiment=bench",
    ]


def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


# ---------------------------------------------------------------------------
# the default recipe's dataset (the prepare section itself is orchestrator.bench_prepare)
# ---------------------------------------------------------------------------

def bench_dataset(workdir: Path) -> Path:
    """The default recipe's corpus prepared under workdir (a no-op when already there)."""
    from orchestrator.prepare import prepare_dataset

    cfg = parse_cli(["--config", THROUGHPUT_RECIPE])
    return prepare_dataset(cfg.data, cfg.tokenizer, workdir / "datasets")


# ---------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------

def _repeat_for(seconds: float, fn, *args) -> tuple[int, float]:
    """Call fn(*args) until `seconds` have passed (at least once); returns (calls, elapsed)."""
    calls = 0
    started = time.perf_counter()
    while True:
        fn(*args)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls, elapsed


def measure_loader(dataset_dir: Path, micro_batch_size: int, seed: int = 0, seconds: float = 1.0,
                   micro_batches: int = LOADER_MICRO_BATCHES) -> dict[str, Any]:
    """Micro-batches/s and bytes/s of `PackedDataset.get` on shuffled micro-batches, as the worker reads them.

    A pass reads `micro_batches` consecutive micro-batches of the sample stream (tens of
    MB, more than the caches hold, so the rows come from memory as in a running job);
    passes repeat for `seconds`.
    """
    from workloads.data.loader import PackedDataset
    from workloads.data.order import global_batch_indices

    train = PackedDataset(dataset_dir, "train")
    stream = [global_batch_indices(train.num_samples, micro_batch_size, k, seed) for k in range(micro_batches)]

    def read_pass() -> None:
        for indices in stream:
            train.get(indices)

    read_pass()  # page the samples in: the measured reads are warm, as in a running job
    passes, elapsed = _repeat_for(seconds, read_pass)
    tokens, segments = train.get(stream[0])
    bytes_per_batch = tokens.nbytes + segments.nbytes  # (b, seq_len+1) int32, twice
    return {
        "micro_batch_size": micro_batch_size,
        "bytes_per_micro_batch": bytes_per_batch,
        "micro_batches_per_pass": micro_batches,
        "bytes_per_pass": micro_batches * bytes_per_batch,
        "micro_batches_per_s": passes * micro_batches / elapsed,
        "bytes_per_s": passes * micro_batches * bytes_per_batch / elapsed,
    }


def measure_memcpy(num_bytes: int, seconds: float = 1.0) -> float:
    """Bytes/s of copying a num_bytes buffer into another, once per repetition.

    Sized as one loader pass, so that the copy too streams through memory rather than
    cache. The destination is allocated once: the loader's small outputs come from the
    allocator's free lists, without the page faults a fresh buffer of tens of MB takes.
    """
    source = np.random.default_rng(0).integers(0, 256, size=num_bytes, dtype=np.uint8)
    destination = np.empty_like(source)
    np.copyto(destination, source)  # fault the destination's pages in before timing
    copies, elapsed = _repeat_for(seconds, np.copyto, destination, source)
    return copies * num_bytes / elapsed


# ---------------------------------------------------------------------------
# throughput: the bare loop and the real path
# ---------------------------------------------------------------------------

def bare_loop(cfg: PretrainConfig, dataset_dir: Path, steps: int, threads: int) -> list[float]:
    """The worker's training loop without Ray or DeepSpeed; returns the time after each step.

    Same model and initial weights, blocks compiled when `parallel.compile_blocks` says so,
    same samples in the same order, torch AdamW on the same param groups with the same
    schedule and gradient clipping, fp32.
    """
    import torch

    from workloads.data.loader import PackedDataset
    from workloads.data.order import global_batch_indices, split_micro_batches
    from workloads.engine import make_adamw, make_scheduler, param_groups
    from workloads.model import GPT
    from workloads.pipeline import compile_blocks

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(cfg.train.seed)
        model = GPT(cfg.model)
        if cfg.parallel.compile_blocks:
            compile_blocks(model.blocks)
        optimizer = make_adamw(param_groups(model, cfg.train.weight_decay), cfg.train, on_gpu=False)
        scheduler = make_scheduler(optimizer, cfg.train)
        train_set = PackedDataset(dataset_dir, "train")
        global_batch = cfg.train.resolved_global_batch(1)
        stamps = [time.perf_counter()]
        for step in range(steps):
            indices = global_batch_indices(train_set.num_samples, global_batch, step, cfg.data.shuffle_seed)
            for micro in split_micro_batches(indices, cfg.train.micro_batch_size):
                tokens, segments = train_set.get(micro)
                loss = model(tokens[:, :-1], targets=tokens[:, 1:], segment_ids=segments[:, :-1])  # (B, T) each
                (loss / cfg.train.grad_accum_steps).backward()
                loss.item()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
        return stamps
    finally:
        torch.set_num_threads(previous_threads)


def steady_tokens_per_s(stamps: list[float], tokens_per_step: int, warmup: int = WARMUP_STEPS) -> float:
    """Tokens/s from the end of step `warmup` to the end of the last step; stamps[k] = end of step k."""
    steps = len(stamps) - 1 - warmup
    if steps < 1:
        raise ValueError(f"need more than {warmup} steps, got {len(stamps) - 1}")
    return steps * tokens_per_step / (stamps[-1] - stamps[warmup])


def step_times_from_metrics(metrics_jsonl: Path) -> list[float]:
    """[start placeholder, end of step 1, ...] from the worker's metrics.jsonl (`time` of each step's record)."""
    times: dict[int, float] = {}
    for line in metrics_jsonl.read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            times[record["step"]] = record["time"]
    steps = sorted(times)
    if steps != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"{metrics_jsonl}: steps {steps[:3]}... are not 1..N")
    return [float("nan")] + [times[s] for s in steps]


def bare_loop_in_ray_worker(cfg: PretrainConfig, dataset_dir: Path, steps: int, threads: int) -> list[float]:
    """`bare_loop` as a Ray task holding as many CPUs as the training worker.

    A Ray worker process differs from this one in what Ray gives every worker:
    its environment (OMP_NUM_THREADS = the CPUs held) and its scheduling priority
    (Ray starts workers at niceness 15, so any other busy process on the machine
    takes the CPU first). Comparing the two bare loops separates those effects
    from the cost of Ray Train and DeepSpeed.
    """
    import ray

    task = ray.remote(num_cpus=threads)(bare_loop)
    return ray.get(task.remote(cfg, dataset_dir, steps, threads))


def measure_throughput(dataset_dir: Path, workdir: Path, steps: int) -> dict[str, Any]:
    """Bare loops of our model and of GPT-2's layout, the real path, the bare loop in a Ray worker, both bare loops again.

    Each ratio divides by the mean of its bare loop's two runs here, one before and one
    after the real path, so that a machine getting busier or quieter during the
    measurement shows as a gap between them; the second runs go in the opposite order,
    so that a steady drift moves both means alike.
    """
    total = steps + WARMUP_STEPS
    args = [*throughput_args(dataset_dir, workdir, "bench-throughput", total), *COMPILED]
    cfg = parse_cli(args)
    gpt2 = parse_cli([*args, *GPT2_LAYOUT])
    tokens_step = cfg.train.resolved_global_batch(1) * cfg.data.seq_len

    def bare(where: str, loop, config: PretrainConfig = cfg) -> float:
        say(f"throughput: bare PyTorch loop {where}, {total} steps")
        rate = steady_tokens_per_s(loop(config, dataset_dir, total, BENCH_CPUS), tokens_step)
        say(f"throughput: bare loop {where}: {rate:,.0f} tok/s")
        return rate

    bare_before = bare("in this process", bare_loop)
    gpt2_before = bare("in GPT-2's layout", bare_loop, gpt2)
    say(f"throughput: real path, {total} steps (Ray Train + DeepSpeed ZeRO {cfg.deepspeed.zero_stage}, 1 worker)")
    started = time.perf_counter()
    pretrain(cfg)
    pretrain_wall = time.perf_counter() - started
    full = steady_tokens_per_s(step_times_from_metrics(cfg.run.run_dir() / METRICS_FILE), tokens_step)
    say(f"throughput: real path: {full:,.0f} tok/s")
    bare_ray = bare("in a Ray worker process", bare_loop_in_ray_worker)
    gpt2_after = bare("in GPT-2's layout, again", bare_loop, gpt2)
    bare_after = bare("in this process, again", bare_loop)
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


# ---------------------------------------------------------------------------
# first step: a user's `python -m orchestrator.pretrain`
# ---------------------------------------------------------------------------

# Lines of the pretrain output that mark its phases, in order.
FIRST_STEP_MARKS = (
    ("ray_started", re.compile(r"^pretrain: (local Ray|cluster at|already)")),
    ("tracking_ready", re.compile(r"^pretrain: run '")),
    ("workers_started", re.compile(r"Started training worker group")),
    ("engine_ready", re.compile(r"training (from scratch|resumed)")),
    ("first_step", re.compile(r"\bstep 1/\d+ \|")),
)
FIRST_STEP_COLD_RUNS = 2


def measure_first_step(dataset_dir: Path, workdir: Path, extensions_dir: Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """Seconds from launching the pretrain CLI (dataset prepared) to its first step line, and its phases.

    A fresh process that starts its own local Ray, as on a laptop. DeepSpeed JIT-builds its CPU ops
    (the shared-memory comm op) into `extensions_dir` ($TORCH_EXTENSIONS_DIR) the first time and loads
    them from there afterwards.
    """
    command = [sys.executable, "-m", "orchestrator.pretrain", *throughput_args(dataset_dir, workdir, "bench-first-step", 2),
               "--train.log_interval=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, as on a laptop
    marks: dict[str, float] = {}
    tail: list[str] = []
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=workdir, start_new_session=True)
    watchdog = threading.Timer(timeout_s, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            now = time.perf_counter() - started
            tail = (tail + [line.rstrip()])[-20:]
            for name, pattern in FIRST_STEP_MARKS:
                if name not in marks and pattern.search(line):
                    marks[name] = now
        status = process.wait()
    finally:
        watchdog.cancel()
    if "first_step" not in marks:
        raise RuntimeError(f"pretrain exited with status {status} before its first step line; last lines:\n" + "\n".join(tail))
    return {"first_step_s": marks["first_step"],
            "details": {"phases_s": marks, "exit_status": status, "load_average_at_launch": load}}


def measure_first_steps(dataset_dir: Path, workdir: Path, cold_runs: int = FIRST_STEP_COLD_RUNS) -> dict[str, Any]:
    """The very first launch (an empty torch extensions directory: it builds DeepSpeed's CPU ops), then
    `cold_runs` cold launches with those ops built; first_step_s is the lowest cold one."""
    extensions_dir = workdir / "first-step-torch-extensions"
    shutil.rmtree(extensions_dir, ignore_errors=True)
    runs = []
    for attempt in range(1 + cold_runs):
        kind = "first launch, building DeepSpeed's CPU ops" if attempt == 0 else f"cold launch {attempt}/{cold_runs}"
        measured = measure_first_step(dataset_dir, workdir, extensions_dir)
        phases = measured["details"]["phases_s"]
        say(f"first step: {kind}: " + ", ".join(f"{name} {phases[name]:.1f}" for name, _ in FIRST_STEP_MARKS if name in phases)
            + f" s (load average {measured['details']['load_average_at_launch']:.1f})")
        runs.append(measured)
    build, cold = runs[0], runs[1:]
    best = min(cold, key=lambda run: run["first_step_s"])
    return {
        "first_step_s": best["first_step_s"],
        "first_step_build_s": build["first_step_s"],
        "details": {**best["details"], "cold_runs": [run["details"] for run in cold], "first_build": build["details"]},
    }


# ---------------------------------------------------------------------------
# generate: KV-cache decoding against no cache and against transformers
# ---------------------------------------------------------------------------

def measure_generate(workdir: Path, model_cfg=None, batch: int = GENERATE_BATCH,
                     prompt_tokens: int = GENERATE_PROMPT_TOKENS, new_tokens: int = GENERATE_NEW_TOKENS,
                     threads: int = BENCH_CPUS, repeats: int = 3) -> dict[str, Any]:
    """Greedy tokens/s of `workloads.generation.generate` with and without its KV cache, and of
    transformers' `generate` on the same weights exported with `workloads.hf_interop`.

    Same seeded random model (the default recipe's shape unless `model_cfg` is given), the
    same fixed random prompts and thread count on every side; end-of-document never stops a
    row, so every side makes exactly batch x new_tokens tokens. Each side is warmed up once;
    our KV-cache side and transformers alternate `repeats` times and each keeps its fastest
    run, so that a machine busy for a while slows both. The uncached side, which reruns the
    whole sequence every step, is slow enough to run once.
    """
    import torch
    import transformers

    from workloads.generation import Sampling, generate
    from workloads.hf_interop import save_hf_model
    from workloads.model import GPT

    cfg = model_cfg or parse_cli(["--config", THROUGHPUT_RECIPE]).model
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
                out = theirs.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                      max_new_tokens=count, eos_token_id=None)  # (B, prompt + count)
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
            "batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "threads": threads,
            "cache_tokens_per_s": [g.tokens_per_s for g in cached],
            "no_cache_tokens_per_s": uncached.tokens_per_s,
            "transformers_tokens_per_s": [batch * new_tokens / s for s in hf_seconds],
            "transformers_version": transformers.__version__,
            # Rows whose greedy continuation matched transformers' token for token (float rounding may split ties).
            "rows_equal_to_transformers": f"{same}/{batch}",
        },
    }


# ---------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------

def train_steps_on_device(cfg: PretrainConfig, device: str, steps: int, warmup: int = 2) -> dict[str, Any]:
    """A recipe's model trained on random tokens on one device in bf16 autocast (fp32 master weights, AdamW).

    Without segment ids, so attention is plain causal (flash kernels where available).
    Throughput counts the `steps` steps after `warmup` (at least 1) steps.
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"need warmup >= 1 and steps >= 1, got {warmup} and {steps}")
    import torch

    from workloads.engine import make_adamw, param_groups
    from workloads.model import GPT, training_flops_per_token
    from workloads.perf import device_peak_flops, mfu

    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    optimizer = make_adamw(param_groups(model, cfg.train.weight_decay), cfg.train, on_gpu=on_gpu)
    batch, seq_len = cfg.train.micro_batch_size, cfg.data.seq_len
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, seq_len + 1), device=device)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    stamps = []  # stamps[0]: end of warm-up; stamps[k]: end of measured step k
    for step in range(warmup + steps):
        for _ in range(cfg.train.grad_accum_steps):
            with torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=torch.bfloat16):
                loss = model(tokens[:, :-1], targets=tokens[:, 1:])  # (B, T) inputs and targets
            (loss / cfg.train.grad_accum_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup - 1:
            sync()
            stamps.append(time.perf_counter())
    tokens_per_s = steady_tokens_per_s(stamps, cfg.train.grad_accum_steps * batch * seq_len, warmup=0)
    flops_per_token = training_flops_per_token(cfg.model, seq_len)
    peak, peak_source = device_peak_flops(on_gpu, bf16=True)
    result = {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "micro_batch": f"{batch} x {seq_len} x {cfg.train.grad_accum_steps} accumulation",
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(flops_per_token, tokens_per_s, peak, 1),
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "final_loss": loss.item(),
    }
    if on_gpu:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del model, optimizer
    return result


def gpu_bench(steps: int = 10) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device is present"}
    results: dict[str, Any] = {"device": torch.cuda.get_device_name()}
    for recipe in GPU_RECIPES:
        say(f"gpu: {recipe}, {steps} steps")
        cfg = parse_cli(["--config", recipe])
        results[recipe] = train_steps_on_device(cfg, "cuda", steps)
        torch.cuda.empty_cache()
        say(f"gpu: {recipe}: {results[recipe]['tokens_per_s']:,.0f} tok/s, MFU {100 * results[recipe]['mfu']:.1f}%, "
            f"peak memory {results[recipe]['peak_memory_gib']:.1f} GiB")
    return results


# ---------------------------------------------------------------------------
# sweep: trials launched by Ray Tune against the same run alone
# ---------------------------------------------------------------------------

def measure_sweep(workdir: Path) -> dict[str, Any]:
    """A small scaling-law sweep filling the machine, then its longest trial's config alone.

    Both runs' steady tokens/s come from their own metrics.jsonl (warm-up steps left out),
    with the same evaluation and checkpoint cadence, the same threads and the same CPUs
    reserved. The sweep's utilization is its own account (orchestrator.sweeping.summary).
    """
    from orchestrator import sweep as sweep_cli
    from orchestrator.sweeping.records import read_record

    name = "bench-sweep"
    argv = ["--config", SWEEP_RECIPE, f"--run.name={name}", f"--run.output_dir={workdir / 'sweep-runs'}",
            f"--tracking.uri={tracking_uri(workdir)}", *SWEEP_OVERRIDES]
    shutil.rmtree(workdir / "sweep-runs" / name, ignore_errors=True)  # a whole sweep every time, nothing read back
    started = time.perf_counter()
    try:
        sweep_cli.main(argv)
    except UserInputError as err:  # a grid this small may not fit a law: the timings are what is measured here
        if not str(err).startswith("sweep: trials done"):
            raise
        say(f"sweep: {err}")
    wall = time.perf_counter() - started
    sweep_dir = workdir / "sweep-runs" / name
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    longest = max((t for t in summary["trials"] if t["kind"] == "grid"), key=lambda t: t["steps"])
    trial_dir = sweep_dir / "trials" / longest["name"]
    record = read_record(trial_dir)
    tokens_step = summary["tokens_per_step"]
    in_sweep = steady_tokens_per_s(step_times_from_metrics(trial_dir / METRICS_FILE)[1:], tokens_step)
    say(f"sweep: {longest['name']} trained at {in_sweep:,.0f} tok/s in the sweep; now the same config alone")
    alone_args = [a for a in record["argv"] if not a.startswith(("--run.name=", "--run.output_dir="))]
    cfg = parse_cli([*alone_args, "--run.name=bench-sweep-alone", f"--run.output_dir={workdir / 'runs'}", "--run.fresh=true"])
    pretrain(cfg)
    alone = steady_tokens_per_s(step_times_from_metrics(cfg.run.run_dir() / METRICS_FILE)[1:], tokens_step)
    usage = summary["utilization"]
    return {
        "sweep_trial_vs_pretrain": in_sweep / alone,
        "sweep_utilization": usage["utilization"],
        "details": {
            "recipe": SWEEP_RECIPE, "overrides": list(SWEEP_OVERRIDES), "trials": len(summary["trials"]),
            "wall_s": wall, "trial_wall_s": usage["wall_s"], "cluster_cpus": usage["cluster_cpus"],
            "launch_share": usage["launch_share"], "measured_trial": longest["name"], "steps": longest["steps"],
            "trial_tokens_per_s_in_sweep": in_sweep, "trial_tokens_per_s_alone": alone,
            "launch_s_per_trial": [r["timing"]["launch_s"] for r in map(read_record, sweep_dir.glob("trials/*"))
                                   if r and r.get("timing")],
        },
    }


# ---------------------------------------------------------------------------
# rl: where a GRPO iteration's time goes, and the weight sync of the default model
# ---------------------------------------------------------------------------

def measure_rl(workdir: Path) -> dict[str, Any]:
    """A short GRPO run (rollout actors, rule reward, DeepSpeed learner) and a timed weight sync."""
    import statistics

    import ray
    import torch

    from orchestrator.rl import parse_rl_cli, run_rl
    from workloads.model import GPT
    from workloads.rl.controller import push_weights
    from workloads.rl.rollout import ActorRole, ActorSpec, RolloutWorker

    uri = tracking_uri(workdir)
    runs = workdir / "rl-runs"
    start = pretrain(parse_cli(["--config", "tiny", "--run.name=bench-rl-start", f"--run.output_dir={runs}",
                                f"--tracking.uri={uri}", "--train.max_steps=30", "--run.fresh=true"]))
    cfg = parse_rl_cli("grpo", ["--config", "tiny", "--run.name=bench-grpo", f"--run.output_dir={runs}",
                                f"--tracking.uri={uri}", f"--model.init_from={start['checkpoint']}",
                                f"--train.max_steps={RL_ITERATIONS}", "--run.fresh=true"])
    run_rl(cfg)
    steady = [line for line in read_metrics(cfg.run.run_dir()) if line.get("step", 0) > 1 and "rl/generation_share" in line]
    shares = {phase: statistics.mean(line[f"rl/{phase}_share"] for line in steady)
              for phase in ("sync", "generation", "scoring", "learning")}

    model_cfg = parse_cli(["--config", THROUGHPUT_RECIPE]).model
    torch.manual_seed(0)
    policy = GPT(model_cfg)
    spec = ActorSpec(RolloutWorker, {"model": dataclasses.asdict(model_cfg), "sampling": {"temperature": 1.0},
                                     "max_new_tokens": 8, "eos_id": 0}, 0.25)
    role = ActorRole("rollout", spec, [spec.start() for _ in range(2)])
    try:
        ray.get([handle.pid.remote() for handle in role.handles])
        seconds = []
        for version in range(6):  # the first one warms up the actors' receiving path
            began = time.perf_counter()
            push_weights(role, policy, version)
            seconds.append(time.perf_counter() - began)
    finally:
        role.stop()
    parameters = sum(p.numel() for p in policy.parameters())
    return {
        "rl_generation_share": shares["generation"],
        "rl_sync_s": statistics.median(seconds[1:]),
        "details": {
            "grpo_iterations": RL_ITERATIONS, "iteration_shares": shares,
            "iteration_s": statistics.mean(line["rl/iteration_s"] for line in steady),
            "rollout_tokens_per_s": statistics.mean(line["perf/rollout_tokens_per_s"] for line in steady),
            "sync_model": f"{model_cfg.n_layers} x {model_cfg.d_model}, vocab {model_cfg.vocab_size}, "
                          f"{parameters:,} parameters, 2 rollout actors", "sync_s": seconds[1:],
        },
    }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def meets_goal(key: str, value: float) -> bool | None:
    if key not in GOALS:
        return None
    comparison, goal = GOALS[key]
    return _COMPARE[comparison](float(value), goal)


def table(report: dict[str, Any]) -> str:
    lines = [f"{'measure':<26}{'value':>14}  {'goal':<10}met", "-" * 56]
    for key in [*GOALS, *REPORTED, "quality_flops", "quality_wall_s"]:
        if key not in report:
            continue
        value = report[key]
        goal = ""
        if key in GOALS:
            goal = f"{GOALS[key][0]} {GOALS[key][1]:g}"
        met = meets_goal(key, value)
        shown = f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
        lines.append(f"{key:<26}{shown:>14}  {goal:<10}{'' if met is None else ('yes' if met else 'NO')}")
    if "gpu" in report:
        lines.append(f"{'gpu':<26}{json.dumps(report['gpu'])[:200]}")
    return "\n".join(lines)


def run(args: argparse.Namespace, quality_overrides: list[str]) -> dict[str, Any]:
    sections = set(args.only.split(",")) if args.only else set(SECTIONS) - {"quality", "gpu"}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise UserInputError(f"--only: unknown section(s) {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
    if args.quality:
        sections.add("quality")
    if args.gpu:
        sections.add("gpu")
    if "quality" in sections and not args.quality:
        raise UserInputError("--only quality needs --quality TEXTFILE")

    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus_on_machine": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }
    details: dict[str, Any] = {}
    say(f"working in {workdir}; load average {report['load_average_at_start']}")
    try:
        needs_dataset = sections & {"loader", "throughput", "first_step"}
        if needs_dataset or "quality" in sections:
            start_ray()
        if needs_dataset:
            say("prepare: the default recipe's corpus (tokenizer training and packing run only once per workdir)")
            dataset_dir = bench_dataset(workdir)
        if "prepare" in sections:
            say(f"prepare: python -m orchestrator.prepare on the embedded corpus and on {SCALE} copies of it")
            stop_ray()  # each prepare starts its own local Ray: leave it the machine
            measured = measure_prepare(workdir, os.cpu_count() or 1, say)
            start_ray()
            report["prepare_driver_rss_growth"] = measured["prepare_driver_rss_growth"]
            report["prepare_vs_single_core"] = measured["prepare_vs_single_core"]
            details["prepare"] = shown = measured["details"]
            say(f"prepare: peak RSS {shown['peak_rss_mib'][0]:.0f} -> {shown['peak_rss_mib'][1]:.0f} MiB "
                f"(ratio {report['prepare_driver_rss_growth']:.3f}); "
                f"{shown['tokenize_tokens_per_s_after_first_tenth']:,.0f} tok/s on {shown['cores']} cores vs "
                f"{shown['single_core_tokens_per_s']:,.0f} tok/s on one: ratio {report['prepare_vs_single_core']:.3f}")
        if "loader" in sections:
            say(f"loader: PackedDataset.get of {LOADER_MICRO_BATCHES} shuffled micro-batches vs a numpy copy of as many bytes")
            micro = parse_cli(["--config", THROUGHPUT_RECIPE]).train.micro_batch_size
            loader = measure_loader(dataset_dir, micro)
            loader["memcpy_bytes_per_s"] = measure_memcpy(loader["bytes_per_pass"])
            report["loader_vs_memcpy"] = loader["bytes_per_s"] / loader["memcpy_bytes_per_s"]
            details["loader"] = loader
            say(f"loader: {loader['micro_batches_per_s']:,.0f} micro-batches/s, {loader['bytes_per_s'] / 1e9:.2f} GB/s "
                f"vs copy {loader['memcpy_bytes_per_s'] / 1e9:.2f} GB/s of {loader['bytes_per_pass'] / 1e6:.0f} MB: "
                f"ratio {report['loader_vs_memcpy']:.3f}")
        if "throughput" in sections:
            measured = measure_throughput(dataset_dir, workdir, args.steps)
            report["pretrain_vs_bare_ratio"] = measured["pretrain_vs_bare_ratio"]
            report["pretrain_vs_gpt2_bare"] = measured["pretrain_vs_gpt2_bare"]
            details["throughput"] = {**measured["details"], "bare_micro_batches_per_s": measured["bare_micro_batches_per_s"]}
            if "loader" in details:
                report["loader_vs_consumption"] = details["loader"]["micro_batches_per_s"] / measured["bare_micro_batches_per_s"]
            say(f"throughput: ratio {report['pretrain_vs_bare_ratio']:.3f} to the bare loop, "
                f"{report['pretrain_vs_gpt2_bare']:.3f} to GPT-2's layout")
        if "quality" in sections:
            say(f"quality: {args.quality}, first 90% of its bytes to train on, the rest to validate, "
                f"{args.flops:.3g} training FLOPs")
            measured = run_quality(Path(args.quality), workdir, tracking_uri(workdir), args.flops, args.quality_recipe,
                                   tuple(quality_overrides))
            report.update({k: measured[k] for k in ("quality_bpb", "quality_flops", "quality_wall_s")})
            details["quality"] = measured["details"]
            say(f"quality: {measured['quality_bpb']:.4f} bits per byte with {measured['quality_flops']:.3g} FLOPs in "
                f"{measured['quality_wall_s']:.0f} s (nanoGPT's baby GPT: {NANOGPT_BPB:.2f})")
        if "first_step" in sections:
            stop_ray()  # the CLI starts its own Ray, as it does for a user
            say("first step: python -m orchestrator.pretrain on the prepared dataset (phases in seconds since launch)")
            measured = measure_first_steps(dataset_dir, workdir)
            report["first_step_s"] = measured["first_step_s"]
            report["first_step_build_s"] = measured["first_step_build_s"]
            details["first_step"] = measured["details"]
            say(f"first step: {report['first_step_s']:.1f} s cold (lowest of {FIRST_STEP_COLD_RUNS}); "
                f"{report['first_step_build_s']:.1f} s for the first launch, which builds DeepSpeed's CPU ops")
        if "generate" in sections:
            say(f"generate: greedy, batch {GENERATE_BATCH}, {GENERATE_PROMPT_TOKENS}-token prompts, "
                f"{GENERATE_NEW_TOKENS} new tokens: KV cache vs none vs transformers")
            measured = measure_generate(workdir)
            report.update({k: measured[k] for k in ("generate_cache_speedup", "generate_vs_transformers")})
            details["generate"] = measured["details"]
            shown = measured["details"]
            say(f"generate: {max(shown['cache_tokens_per_s']):,.0f} tok/s with the cache, "
                f"{shown['no_cache_tokens_per_s']:,.0f} without, transformers {max(shown['transformers_tokens_per_s']):,.0f}")
        if "sweep" in sections:
            start_ray()
            say(f"sweep: the {SWEEP_RECIPE} sweep recipe, {' '.join(SWEEP_OVERRIDES)}")
            measured = measure_sweep(workdir)
            report.update({k: measured[k] for k in ("sweep_trial_vs_pretrain", "sweep_utilization")})
            details["sweep"] = measured["details"]
            say(f"sweep: trial {measured['sweep_trial_vs_pretrain']:.3f} of its speed alone; utilization "
                f"{measured['sweep_utilization']:.1%}, launching {measured['details']['launch_share']:.1%}")
        if "rl" in sections:
            start_ray()
            say(f"rl: grpo tiny recipe for {RL_ITERATIONS} iterations; weight sync of the {THROUGHPUT_RECIPE} recipe's model")
            measured = measure_rl(workdir)
            report.update({k: measured[k] for k in REPORTED})
            details["rl"] = measured["details"]
            say(f"rl: generation {measured['rl_generation_share']:.1%} of an iteration; weight sync "
                f"{measured['rl_sync_s']:.3f} s")
        if "gpu" in sections:
            report["gpu"] = gpu_bench()
            if "skipped" in report["gpu"]:
                say(f"gpu: skipped, {report['gpu']['skipped']}")
    finally:
        stop_ray()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["load_average_at_end"] = list(os.getloadavg())
    report["details"] = details
    report["warnings"] = busy_machine_warnings(report)
    return report


def busy_machine_warnings(report: dict[str, Any]) -> list[str]:
    """Signs that other work on the machine disturbed the timings."""
    warnings = []
    cpus = report["cpus_on_machine"] or BENCH_CPUS
    load = report["load_average_at_start"][0]  # later ones include this bench's own work
    if load > 0.5 * cpus:
        warnings.append(f"the 1-minute load average was {load:.1f} on {cpus} CPUs before the bench started: "
                        "other work disturbs the timings, compare runs on a quiet machine")
    spread = report["details"].get("throughput", {}).get("bare_spread", 0.0)
    if spread > 0.05:
        warnings.append(f"the bare loop ran {100 * spread:.0f}% faster or slower after the real path than before: "
                        "the machine's speed changed during the measurement")
    return warnings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--workdir", help="keep runs, datasets and the MLflow database here (default: a temporary directory)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per throughput run, after warm-up")
    parser.add_argument("--quality", metavar="TEXTFILE", help="run the learning-quality check on this text file")
    parser.add_argument("--flops", type=float, default=NANOGPT_FLOPS, help="training FLOP budget of the quality check")
    parser.add_argument("--quality-recipe", default="quality", help="recipe of the quality check (name or YAML)")
    parser.add_argument("--gpu", action="store_true", help="benchmark the GPU recipes' models on one CUDA device")
    parser.add_argument("--only", help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not re.match(r"^--\w+\.\w+=", a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (quality overrides look like --section.field=value)")
    report = run(args, rest)
    print(table(report), flush=True)
    for warning in report["warnings"]:
        print(f"warning: {warning}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.out}")


if __name__ == "__main__":
    from orchestrator.config import run_cli

    run_cli(main, sys.argv[1:])
