"""The one training loop every stage runs inside each Ray Train worker.

The driver passes plain dicts (one per config section plus resolved paths and the
stage's name); the stage (`workloads.stages`) supplies data, model, loss and
metrics. This loop builds the DeepSpeed engine through the stage, restores the
latest checkpoint if Ray has one (resharding it for another worker count) or, for
a branch, starts from another run's checkpoint with this run's own learning-rate
schedule, walks the global sample stream, and reports progress, evaluations and
checkpoints (every evaluation reaches Ray Train, with or without a checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from workloads.checkpoints.saving import EVAL_STEP_KEY, ResumePoint, TrainingState, save_and_report
from workloads.data.order import rank_share, split_micro_batches, stream_indices
from workloads.metrics_log import METRICS_FILE, MetricsLog
from workloads.perf import device_peak_flops, mfu
from workloads.sample_ledger import SampleLedger
from workloads.stages import make_stage
from workloads.stages.base import WorkerPlan
from workloads.train_config import TrainConfig


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass(frozen=True)
class Cadence:
    """When a loop of steps shows progress, checkpoints and stops; the one cadence of every training loop
    (the RL learner's steps are its iterations)."""

    train: TrainConfig
    start_step: int  # the last step already trained (0 on a fresh start)
    extra_checkpoints: frozenset[int] = frozenset()  # run.checkpoint_steps

    @property
    def stop_step(self) -> int:
        return min(self.train.max_steps, self.train.halt_at_step or self.train.max_steps)

    def steps(self) -> range:
        return range(self.start_step + 1, self.stop_step + 1)

    def shows_progress(self, step: int) -> bool:
        return step == self.start_step + 1 or step % self.train.log_interval == 0 or step == self.stop_step

    def checkpoints(self, step: int) -> bool:
        interval = self.train.checkpoint_interval
        return bool(interval and step % interval == 0) or step == self.stop_step or step in self.extra_checkpoints

    def eta(self, step: int, seconds_per_step: float) -> str:
        return format_duration((self.stop_step - step) * seconds_per_step)


def global_means(values: dict[str, float], device) -> dict[str, float]:
    """The mean over all ranks of each of this rank's values (one all-reduce)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / dist.get_world_size()).tolist()))


def train_worker(payload: dict[str, Any]) -> None:
    """Ray Train entry point (`TorchTrainer(train_loop_per_worker=train_worker)`) of every stage."""
    plan = WorkerPlan.from_payload(payload)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    on_gpu = torch.cuda.is_available() and ray.train.torch.get_device().type == "cuda"
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    torch.set_num_threads(plan.threads_per_worker)
    is_chief = rank == 0
    train_cfg = plan.train
    stage = make_stage(plan, device, on_gpu)
    # Written into every checkpoint, so that loading one needs nothing but its path.
    description = stage.describe() if is_chief else {}

    pipeline_stages = plan.parallel.pipeline_stages
    global_batch = train_cfg.resolved_global_batch(world // pipeline_stages)
    tokens_per_step = global_batch * stage.tokens_per_sample
    peak, peak_source = device_peak_flops(on_gpu, plan.deepspeed.uses_bf16(on_gpu), train_cfg.peak_flops_per_device)

    # A branch starts from another run's checkpoint, once: after its own first checkpoint it resumes from that.
    resume = ResumePoint.find(world // pipeline_stages, pipeline_stages, payload.get("branch_from", ""))
    engine, dp_rank, dp_world = stage.build_engine(world, resume.engine_overrides())
    resume.restore(engine, plan.run_dir, rank)
    start_step = resume.step
    position = resume.samples_consumed
    cadence = Cadence(train_cfg, start_step, frozenset(payload.get("checkpoint_steps", ())))
    ledger = SampleLedger(plan.run_dir, rank, dp_rank, start_step) if stage.reads_data(engine) else None

    log = MetricsLog(Path(plan.run_dir) / METRICS_FILE) if is_chief else None
    if is_chief:
        where = resume.describe()
        layout = f" = {pipeline_stages} pipeline stages x {dp_world} data-parallel" if pipeline_stages > 1 else ""
        print(
            f"{stage.name}: training {where}: {world} worker(s){layout}, global batch {global_batch} x "
            f"{stage.tokens_per_sample} tokens, ZeRO {plan.deepspeed.zero_stage}, "
            f"{stage.flops_per_token / 1e6:.2f} MFLOP/token, peak {peak / 1e12:.2f} TFLOP/s per device ({peak_source})",
            flush=True,
        )

    def run_eval(step: int) -> dict[str, float]:
        results = stage.evaluate(engine, dp_rank, dp_world)
        if is_chief:
            log.log(step, results)
            print(f"eval step {step}: {stage.eval_line(results)}", flush=True)
        return results

    def checkpoint(step: int, metrics: dict[str, float]) -> None:
        state = TrainingState(step, position, global_batch, dp_world, pipeline_stages, plan.deepspeed.zero_stage)
        save_and_report(engine, state, {"step": step, **metrics}, is_chief, description)

    if stage.evaluate_at_start and resume.start is None:
        run_eval(0)
    window_start, window_steps = time.perf_counter(), 0
    last_eval: dict[str, float] = {}
    last_eval_step = 0
    step = start_step
    for step in cadence.steps():
        batch = stream_indices(stage.num_train_samples, position, global_batch, plan.shuffle_seed)
        indices = rank_share(batch, dp_rank, dp_world)
        step_metrics = stage.train_step(engine, split_micro_batches(indices, train_cfg.micro_batch_size))
        position += global_batch
        if ledger:
            ledger.record(step, indices)
        metrics = step_metrics if stage.step_metrics_are_global else global_means(step_metrics, device)
        window_steps += 1
        if cadence.shows_progress(step):
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * tokens_per_step / elapsed
            grad_norm = engine.get_global_grad_norm()
            metrics.update(
                {
                    "train/lr": engine.get_lr()[0],
                    "perf/tokens_per_s": tokens_per_s,
                    "perf/mfu": mfu(stage.flops_per_token, tokens_per_s, peak, world),
                }
            )
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            if is_chief:
                eta = cadence.eta(step, elapsed / window_steps)
                print(
                    f"step {step}/{train_cfg.max_steps} | {stage.progress(metrics)} | lr {metrics['train/lr']:.2e} | "
                    f"{tokens_per_s:,.0f} tok/s | MFU {100 * metrics['perf/mfu']:.1f}% | ETA {eta}",
                    flush=True,
                )
            window_start, window_steps = time.perf_counter(), 0
        if is_chief:
            log.log(step, metrics)
        evaluated = step % train_cfg.eval_interval == 0 or step == train_cfg.max_steps
        if evaluated:
            last_eval, last_eval_step = run_eval(step), step
        if cadence.checkpoints(step):
            checkpoint(step, {"train/loss": metrics["train/loss"], **last_eval, EVAL_STEP_KEY: last_eval_step})
            window_start, window_steps = time.perf_counter(), 0  # do not bill checkpoint time to training throughput
        elif evaluated:
            # Every evaluation reaches Ray Train (and whoever listens, e.g. Ray Tune), not only those
            # that come with a checkpoint.
            ray.train.report({"step": step, "train/loss": metrics["train/loss"], **last_eval, EVAL_STEP_KEY: step})

    if step == start_step:  # nothing left to train: still hand the driver the final numbers
        last_eval = run_eval(step)
        ray.train.report({"step": step, **last_eval})
    if ledger:
        ledger.close()
    if is_chief:
        log.close()
