"""The driver-only sections every stage's tree shares: `run`, `scaling` and `tracking`.

The sections the workers use are declared next to the code that uses them in
`workloads/`; each stage's whole tree is declared with its driver in
`orchestrator.stages`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workloads.errors import UserInputError
from workloads.schema import option

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class RunConfig:
    """Naming and location of a run: resubmitting the same name resumes it."""

    name: str = option("pretrain", "run name; resubmitting the same name resumes from its latest checkpoint")
    output_dir: str = option("runs", "root for run directories and prepared datasets (shared storage on a cluster)")
    fresh: bool = option(False, "start over: delete this run's checkpoints (needed when its config changed)")
    allow_global_batch_change: bool = option(
        False, "resume with another global batch size, continuing from the samples consumed so far"
    )
    branch_from: str = option(
        "",
        "start this new run from another run's checkpoint (its directory, or a run directory for its latest): "
        "weights, optimizer state and data position carry over, the learning-rate schedule is this run's own "
        "from that step on (e.g. a WSD cooldown branch)",
    )
    checkpoint_steps: list = option(
        [], "steps to checkpoint at besides every train.checkpoint_interval (e.g. where other runs branch off)"
    )

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UserInputError(f"run.name: '{self.name}' must be a non-empty name without '/'")
        for step in self.checkpoint_steps:
            if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise UserInputError(f"run.checkpoint_steps: {step!r} is not a step number >= 1")

    def run_dir(self) -> Path:
        return Path(self.output_dir).resolve() / self.name


@dataclass
class ScalingConfig:
    """Workers and resources for Ray Train."""

    num_workers: int = option(1, "training workers (data-parallel ranks x pipeline stages)")
    use_gpu: bool = option(False, "one GPU per worker, NCCL between them; otherwise CPU workers with gloo")
    cpus_per_worker: float = option(
        1.0,
        "CPUs reserved per worker (fractions allowed); rounded to the nearest whole number (at least 1), "
        "its torch threads",
    )
    placement_strategy: str = option("PACK", "Ray placement of workers: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD")
    nccl_preset: str = option("", "fabric preset of NCCL variables (infiniband, roce, efa, tcp) or a runtime-env YAML")
    max_failures: int = option(0, "worker-group restarts from the latest checkpoint after a failure")

    def validate(self) -> None:
        if self.num_workers < 1:
            raise UserInputError(f"scaling.num_workers: must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise UserInputError(f"scaling.cpus_per_worker: must be > 0, got {self.cpus_per_worker}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise UserInputError(
                f"scaling.placement_strategy: '{self.placement_strategy}' is not one of "
                f"{', '.join(PLACEMENT_STRATEGIES)}"
            )
        if self.max_failures < -1:
            raise UserInputError(f"scaling.max_failures: must be >= -1 (-1 = unlimited), got {self.max_failures}")


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    uri: str = option(
        "", "tracking URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory"
    )
    experiment: str = option("pretrain", "MLflow experiment name")
    flush_timeout_s: float = option(
        30.0,
        "at the end, wait this long for an unreachable tracking server before leaving metrics for the next submission",
    )

    def validate(self) -> None:
        if not self.experiment:
            raise UserInputError("tracking.experiment: must not be empty")


def absolute(path: str) -> str:
    """`path` made absolute against the working directory (symlinks kept); empty stays empty."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def dataset_root(output_dir: str, dataset_dir: str = "") -> Path:
    """Where a stage's prepared datasets live: `data.dataset_dir`, else `<run.output_dir>/datasets`."""
    return (Path(dataset_dir) if dataset_dir else Path(output_dir) / "datasets").resolve()
