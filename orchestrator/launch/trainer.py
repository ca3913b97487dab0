"""Launching one training stage on Ray Train, the same way for pretraining and every fine-tuning stage.

`train_on_ray` claims the run directory, connects to Ray, has the stage's data
prepared, opens the MLflow run (continued on a resubmission), fits a `TorchTrainer`
whose workers all run `workloads.loop.train_worker`, and records the outcome.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.config.parser import to_dict
from orchestrator.launch import best_checkpoint, ray_runtime, run_state
from orchestrator.launch.fabric import load_nccl_preset
from orchestrator.launch.tracking import RunRecorder, client_in_background, resolve_tracking_uri


def worker_runtime_env(scaling) -> dict[str, Any]:
    # Plain prints: Train's print-to-logger patch doubles every line once a library wraps stdout.
    env: dict[str, str] = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if not scaling.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for accelerators and warn
    if scaling.nccl_preset:
        env.update(load_nccl_preset(scaling.nccl_preset))
    return {"env_vars": env}


def worker_threads(cpus_per_worker: float) -> int:
    """Torch threads of a worker: its CPUs rounded half up, at least 1.

    Rounded rather than truncated so that a reservation just under a whole CPU keeps that
    CPU's thread: a sweep reserves 0.9 (or 1.9) per worker to leave 0.1 to each trial's idle
    Tune trainable, and its trials must train as fast as the same run alone.
    """
    return max(1, math.floor(cpus_per_worker + 0.5))


def build_trainer(
    cfg,
    payload: dict[str, Any],
    run_dir: Path,
    callbacks: list | None = None,
    train_loop: Callable[[dict[str, Any]], None] | None = None,
):
    # ray: Ray Train (and the modules built on it) is imported when a run launches, so that parsing a
    # stage's config (--help, --print-config, the GPU check where Ray is not installed) needs no Ray.
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.launch.callbacks import BestCheckpointKeeper
    from workloads.loop import train_worker

    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop or train_worker,
        train_loop_config=payload,
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_state.TRAIN_STORAGE,
            storage_path=str(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            # Ray deletes a checkpoint only after a newer one is registered, so one always survives.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints or None),
            callbacks=([BestCheckpointKeeper(run_dir, payload["stage"])] if cfg.train.keep_best_checkpoint else [])
            + list(callbacks or []),
            worker_runtime_env=worker_runtime_env(cfg.scaling),
        ),
    )


@dataclasses.dataclass
class Launch:
    """What differs between stages when they are launched."""

    stage: str  # workloads.stages name
    identity: str  # hash of what determines the loss curve (a run directory keeps one)
    global_batch: int
    prepare: Callable[[], tuple[Path, dict[str, Any]]]  # -> (dataset directory, its manifest), checked
    shuffle_seed: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the stage's own section for the workers
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # lineage and more, on the MLflow run
    # After training, on the driver: extra final metrics (e.g. sampled generations) given the final
    # results and the open MLflow recorder.
    after_training: Callable[[dict[str, Any], RunRecorder], dict[str, float]] | None = None
    allow_global_batch_change: bool = False
    # More Ray Train callbacks for the trainer (they run in its controller), e.g. Tune's
    # TuneReportCallback when a sweep launches this run as a Tune trial.
    callbacks: list = dataclasses.field(default_factory=list)
    # The workers' function; None = the one training loop of every offline stage (workloads.loop.train_worker).
    # RL runs its own (workloads.rl.learner.learner_worker).
    train_loop: Callable[[dict[str, Any]], None] | None = None
    # Right after the fit, on the driver: may raise to fail the run (the MLflow run is closed as FAILED),
    # e.g. when the workers recorded why they stopped early.
    check_result: Callable[[Any], None] | None = None


def train_on_ray(cfg, launch: Launch) -> dict[str, Any]:
    """Run (or resume) one stage's training job; returns the final reported metrics."""
    started = time.perf_counter()
    name = launch.stage
    run_dir = cfg.run.run_dir()
    previous = run_state.claim(
        run_dir, launch.identity, launch.global_batch, cfg.run.fresh, launch.allow_global_batch_change
    )
    if cfg.scaling.nccl_preset:
        worker_runtime_env(cfg.scaling)  # a bad preset name fails here, before anything starts

    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    client = client_in_background(tracking_uri)  # seconds of imports and store set-up, while Ray starts
    print(f"{name}: {ray_runtime.connect()}", flush=True)
    dataset_dir, manifest = launch.prepare()

    state = run_state.RunState(
        launch.identity, launch.global_batch, previous.mlflow_run_id if previous else "", tracking_uri
    )
    run_state.save(run_dir, state)

    def remember_run_id(run_id: str) -> None:
        state.mlflow_run_id = run_id
        run_state.save(run_dir, state)

    recorder = RunRecorder(
        tracking_uri,
        cfg.tracking.experiment,
        cfg.run.name,
        state.mlflow_run_id,
        tags={
            "orchestrator.stage": name,
            "orchestrator.identity": launch.identity,
            "orchestrator.run_dir": str(run_dir),
            **launch.tags,
        },
        config=to_dict(cfg),
        dataset_dir=dataset_dir,
        manifest=manifest,
        run_dir=run_dir,
        on_run_opened=remember_run_id,
        client=client.result(),
    )
    recorder.start()
    print(f"{name}: run '{cfg.run.name}' in {run_dir} | MLflow run {recorder.run_id or '(pending)'} at {tracking_uri}")

    payload = {
        "stage": name,
        **{
            section: dataclasses.asdict(getattr(cfg, section))
            for section in ("model", "train", "deepspeed", "parallel")
        },
        "shuffle_seed": launch.shuffle_seed,
        "options": launch.options,
        "dataset_dir": str(dataset_dir),
        "run_dir": str(run_dir),
        "threads_per_worker": worker_threads(cfg.scaling.cpus_per_worker),
        # A branch's origin (an absolute checkpoint directory) and extra checkpoint steps: see RunConfig.
        "branch_from": cfg.run.branch_from,
        "checkpoint_steps": sorted(cfg.run.checkpoint_steps),
    }
    trainer = build_trainer(cfg, payload, run_dir, launch.callbacks, launch.train_loop)
    try:
        result = trainer.fit()
        if launch.check_result is not None:
            launch.check_result(result)
    except Exception:
        recorder.finish({}, 0, {}, "FAILED", timeout=cfg.tracking.flush_timeout_s)
        raise
    final = dict(result.metrics or {})
    tags = {}
    if result.checkpoint is not None:
        final["checkpoint"] = tags["orchestrator.final_checkpoint"] = result.checkpoint.path
    best = best_checkpoint.read_best(run_dir) if cfg.train.keep_best_checkpoint else None
    if best is not None:
        tags["orchestrator.launch.best_checkpoint"] = str(run_dir / best_checkpoint.BEST_LINK)
        tags["orchestrator.best_checkpoint_step"] = str(best["step"])
    final_metrics = {f"final/{k.removeprefix('eval/')}": v for k, v in final.items() if k.startswith("eval/")}
    halted = cfg.train.halt_at_step and final.get("step", 0) < cfg.train.max_steps
    if launch.after_training is not None and not halted and "checkpoint" in final:
        extra = launch.after_training(final, recorder)
        final.update(extra)
        final_metrics.update(extra)
    recorder.finish(
        {**final_metrics, "run/wall_s": time.perf_counter() - started},
        int(final.get("step", 0)),
        tags,
        "KILLED" if halted else "FINISHED",
        timeout=cfg.tracking.flush_timeout_s,
    )
    final["mlflow_run_id"] = recorder.run_id
    if "eval/loss" in final and not halted:
        details = f" | bits per byte {final['eval/bpb']:.4f}" if "eval/bpb" in final else ""
        print(
            f"{name}: done at step {final.get('step')} | final validation loss {final['eval/loss']:.4f}{details} | "
            f"checkpoint {final.get('checkpoint')}"
        )
    elif not halted:
        print(f"{name}: done at step {final.get('step')} | checkpoint {final.get('checkpoint')}")
    else:
        print(
            f"{name}: stopped at step {final.get('step')} | checkpoint {final.get('checkpoint')} (resubmit to continue)"
        )
    if best is not None:
        print(
            f"{name}: best checkpoint: step {best['step']}, validation loss {best['eval_loss']:.4f} "
            f"| {run_dir / best_checkpoint.BEST_LINK}"
        )
    return final
