"""What the bench's sections share: its machine, its recipe and dataset, a local Ray, timing from a run's metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.data.pretraining import prepare_dataset
from orchestrator.stages.pretrain import PRETRAIN

BENCH_CPUS = 2  # the machine this bench is calibrated for: one worker of 2 CPUs, 2 torch threads
THROUGHPUT_RECIPE = "default"
WARMUP_STEPS = 3  # steps left out of steady-state throughput (allocator, caches, first-call costs)


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def start_ray() -> None:
    """One local Ray for the in-process parts, unless this process already has one."""
    import ray  # ray: imported when a section needs it; the gpu section runs where Ray is not installed

    if not ray.is_initialized():
        # address="local": a new instance even where another cluster runs on this machine.
        ray.init(address="local", num_cpus=BENCH_CPUS, log_to_driver=True)


def stop_ray() -> None:
    ray = sys.modules.get("ray")  # never imported, never started: the gpu section runs where Ray is not installed
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def throughput_args(dataset_dir: Path, workdir: Path, name: str, steps: int) -> list[str]:
    """The pretrain command line of the default recipe on the bench's prepared dataset."""
    return [
        "--config",
        THROUGHPUT_RECIPE,
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


def bench_dataset(workdir: Path) -> Path:
    """The default recipe's corpus prepared under workdir (a no-op when already there)."""
    cfg = PRETRAIN.parse(["--config", THROUGHPUT_RECIPE])
    return prepare_dataset(cfg.data, cfg.tokenizer, workdir / "datasets")


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
