"""The pretraining loop that runs inside each Ray Train worker.

The driver passes plain dicts (one per config section plus resolved paths); this
module rebuilds the sections it owns, builds the model and the DeepSpeed engine,
restores the latest checkpoint if Ray has one, and trains. Each worker reads only
its own share of every global batch straight from the memory-mapped Arrow shards.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from workloads.checkpointing import (
    EVAL_STEP_KEY,
    TrainingState,
    latest_state,
    needs_resharding,
    restore,
    save_and_report,
    universal_config,
)
from workloads.checkpoint_loading import describe_checkpoint
from workloads.data.config import DataConfig
from workloads.data.loader import PackedDataset
from workloads.data.order import rank_share, split_micro_batches, stream_indices
from workloads.data.shards import TOKENIZER_FILE
from workloads.engine import DeepSpeedConfig, build_engine
from workloads.evaluation import eval_sample_indices, evaluate
from workloads.metrics_log import METRICS_FILE, MetricsLog
from workloads.initialization import initial_model
from workloads.model import ModelConfig, training_flops_per_token
from workloads.perf import device_peak_flops, mfu
from workloads.sample_ledger import SampleLedger
from workloads.pipeline import (
    ParallelConfig,
    build_pipeline_engine,
    checkpoint_blocks,
    compile_blocks,
    data_parallel_coordinates,
    pipeline_evaluate,
    pipeline_train_step,
)
from workloads.tokenizer import Tokenizer
from workloads.train_config import TrainConfig


@dataclass
class WorkerPlan:
    """Everything a worker needs, resolved by the driver."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    deepspeed: DeepSpeedConfig
    parallel: ParallelConfig
    dataset_dir: str
    run_dir: str
    threads_per_worker: int

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "WorkerPlan":
        return cls(
            model=ModelConfig(**payload["model"]),
            data=DataConfig(**payload["data"]),
            train=TrainConfig(**payload["train"]),
            deepspeed=DeepSpeedConfig(**payload["deepspeed"]),
            parallel=ParallelConfig(**payload["parallel"]),
            **{k: payload[k] for k in ("dataset_dir", "run_dir", "threads_per_worker")},
        )


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def global_mean(value: float, device) -> float:
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def train_step(engine, dataset, micro_batches: list[np.ndarray], device) -> float:
    """One optimizer step over this rank's micro-batches; returns the rank's mean loss."""
    losses = []
    for indices in micro_batches:
        tokens, segments = dataset.get(indices)
        tokens, segments = tokens.to(device, non_blocking=True), segments.to(device, non_blocking=True)
        loss = engine(tokens[:, :-1], targets=tokens[:, 1:], segment_ids=segments[:, :-1])  # inputs/targets (B, T)
        engine.backward(loss)
        engine.step()  # DeepSpeed applies the optimizer only at the accumulation boundary
        losses.append(loss.item())
    return sum(losses) / len(losses)


def train_worker(payload: dict[str, Any]) -> None:
    """Ray Train entry point (`TorchTrainer(train_loop_per_worker=train_worker)`)."""
    plan = WorkerPlan.from_payload(payload)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    on_gpu = torch.cuda.is_available() and ray.train.torch.get_device().type == "cuda"
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    torch.set_num_threads(plan.threads_per_worker)
    is_chief = rank == 0
    train_cfg, data_cfg = plan.train, plan.data

    train_set = PackedDataset(plan.dataset_dir, "train")
    val_set = PackedDataset(plan.dataset_dir, "val")
    tokenizer = Tokenizer.load(Path(plan.dataset_dir) / TOKENIZER_FILE)
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), device=device)
    # Written into every checkpoint, so that loading one needs nothing but its path.
    description = describe_checkpoint(plan.model, tokenizer, plan.dataset_dir, train_cfg) if is_chief else {}
    stages = plan.parallel.pipeline_stages
    pipelined = stages > 1
    global_batch = train_cfg.resolved_global_batch(world // stages)
    seq_len = train_set.seq_len
    flops_per_token = training_flops_per_token(plan.model, seq_len)
    peak, peak_source = device_peak_flops(on_gpu, plan.deepspeed.uses_bf16(on_gpu), train_cfg.peak_flops_per_device)

    saved = latest_state()
    reshard = saved is not None and needs_resharding(saved, world // stages, stages)
    if pipelined:
        # The stages start from GPT(plan.model)'s weights under the same seed, like every other layout.
        engine = build_pipeline_engine(plan.model, plan.parallel, plan.deepspeed, train_cfg, world // stages, on_gpu)
        # Ranks of one pipeline share a data-parallel rank: they read the same samples.
        dp_rank, dp_world = data_parallel_coordinates(engine)
        step_fn, evaluate_fn = pipeline_train_step, pipeline_evaluate
    else:
        model = initial_model(plan.model, train_cfg.seed)  # identical initial weights on every rank and every layout
        if plan.parallel.activation_checkpointing:
            checkpoint_blocks(model)
        if plan.parallel.compile_blocks:
            compile_blocks(model.blocks)
        engine = build_engine(model, plan.deepspeed, train_cfg, world, on_gpu, universal_config() if reshard else None)
        dp_rank, dp_world = rank, world
        step_fn, evaluate_fn = train_step, evaluate
    if saved:
        restore(engine, saved, Path(plan.run_dir) / "universal", reshard, rank)
    start_step = saved.step if saved else 0
    # Stream position of the next sample: resuming continues exactly there, whatever the layout now.
    position = saved.samples_consumed if saved else 0
    reads_data = not pipelined or engine.is_first_stage()
    ledger = SampleLedger(plan.run_dir, rank, dp_rank, start_step) if reads_data else None

    log = MetricsLog(Path(plan.run_dir) / METRICS_FILE) if is_chief else None
    if is_chief:
        where = f"resumed from step {start_step}" if saved else "from scratch"
        layout = f" = {stages} pipeline stages x {dp_world} data-parallel" if pipelined else ""
        print(
            f"training {where}: {world} worker(s){layout}, global batch {global_batch} x {seq_len} tokens, "
            f"ZeRO {plan.deepspeed.zero_stage}, {flops_per_token / 1e6:.2f} MFLOP/token, peak {peak / 1e12:.2f} "
            f"TFLOP/s per device ({peak_source})",
            flush=True,
        )
    eval_indices = eval_sample_indices(val_set.num_samples, train_cfg.eval_samples, dp_rank, dp_world)

    def run_eval(step: int) -> dict[str, float]:
        results = evaluate_fn(engine, val_set, eval_indices, train_cfg.micro_batch_size, byte_lengths, device)
        if is_chief:
            log.log(step, results)
            print(
                f"eval step {step}: loss {results['eval/loss']:.4f} | ppl {results['eval/ppl']:.2f} | "
                f"bpb {results['eval/bpb']:.4f}",
                flush=True,
            )
        return results

    def checkpoint(step: int, metrics: dict[str, float]) -> None:
        state = TrainingState(step, position, global_batch, dp_world, stages, plan.deepspeed.zero_stage)
        save_and_report(engine, state, {"step": step, **metrics}, is_chief, description)

    stop_step = min(train_cfg.max_steps, train_cfg.halt_at_step or train_cfg.max_steps)
    window_start, window_steps = time.perf_counter(), 0
    last_eval: dict[str, float] = {}
    last_eval_step = 0
    step = start_step
    for step in range(start_step + 1, stop_step + 1):
        batch = stream_indices(train_set.num_samples, position, global_batch, data_cfg.shuffle_seed)
        indices = rank_share(batch, dp_rank, dp_world)
        step_loss = step_fn(engine, train_set, split_micro_batches(indices, train_cfg.micro_batch_size), device)
        position += global_batch
        if ledger:
            ledger.record(step, indices)
        # A pipeline step already returns the mean over the global batch, on every rank (the chief included).
        loss = step_loss if pipelined else global_mean(step_loss, device)
        window_steps += 1
        metrics = {"train/loss": loss}
        if step == start_step + 1 or step % train_cfg.log_interval == 0 or step == stop_step:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * global_batch * seq_len / elapsed
            grad_norm = engine.get_global_grad_norm()
            metrics.update(
                {
                    "train/lr": engine.get_lr()[0],
                    "perf/tokens_per_s": tokens_per_s,
                    "perf/mfu": mfu(flops_per_token, tokens_per_s, peak, world),
                }
            )
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            if is_chief:
                eta = (stop_step - step) * elapsed / window_steps
                print(
                    f"step {step}/{train_cfg.max_steps} | loss {loss:.4f} | lr {metrics['train/lr']:.2e} | "
                    f"{tokens_per_s:,.0f} tok/s | MFU {100 * metrics['perf/mfu']:.1f}% | ETA {format_duration(eta)}",
                    flush=True,
                )
            window_start, window_steps = time.perf_counter(), 0
        if is_chief:
            log.log(step, metrics)
        if step % train_cfg.eval_interval == 0 or step == train_cfg.max_steps:
            last_eval, last_eval_step = run_eval(step), step
        at_interval = train_cfg.checkpoint_interval and step % train_cfg.checkpoint_interval == 0
        if at_interval or step == stop_step:
            checkpoint(step, {"train/loss": loss, **last_eval, EVAL_STEP_KEY: last_eval_step})
            window_start = time.perf_counter()  # do not bill checkpoint time to training throughput

    if step == start_step:  # nothing left to train: still hand the driver the final numbers
        last_eval = run_eval(step)
        ray.train.report({"step": step, **last_eval})
    if ledger:
        ledger.close()
    if is_chief:
        log.close()
