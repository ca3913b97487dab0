"""The config tree of `orchestrator.pretrain` (and `orchestrator.prepare`).

Driver-only sections (run, scaling, tracking) are declared here; the sections the
workers use are declared next to the code that uses them in `workloads/`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from workloads.data.config import DataConfig
from workloads.engine import DeepSpeedConfig
from workloads.errors import UserInputError
from workloads.model import ModelConfig
from workloads.pipeline import ParallelConfig
from workloads.schema import option
from workloads.tokenizer import TokenizerConfig
from workloads.train_config import CADENCE_FIELDS, TrainConfig

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
        "", "start this new run from another run's checkpoint (its directory, or a run directory for its latest): "
        "weights, optimizer state and data position carry over, the learning-rate schedule is this run's own "
        "from that step on (e.g. a WSD cooldown branch)"
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
        1.0, "CPUs reserved per worker (fractions allowed); rounded to the nearest whole number (at least 1), its torch threads"
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
                f"scaling.placement_strategy: '{self.placement_strategy}' is not one of {', '.join(PLACEMENT_STRATEGIES)}"
            )
        if self.max_failures < -1:
            raise UserInputError(f"scaling.max_failures: must be >= -1 (-1 = unlimited), got {self.max_failures}")


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    uri: str = option("", "tracking URI; empty = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory")
    experiment: str = option("pretrain", "MLflow experiment name")
    flush_timeout_s: float = option(
        30.0, "at the end, wait this long for an unreachable tracking server before leaving metrics for the next submission"
    )

    def validate(self) -> None:
        if not self.experiment:
            raise UserInputError("tracking.experiment: must not be empty")


@dataclass
class PretrainConfig:
    """The whole tree of a pretrain run."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = dataclasses.field(default_factory=DeepSpeedConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    scaling: ScalingConfig = dataclasses.field(default_factory=ScalingConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            if section.name != "parallel":
                getattr(self, section.name).validate()
        self.parallel.validate(self.scaling.num_workers, self.deepspeed.zero_stage, self.model.n_layers)
        if self.data.seq_len > self.model.max_seq_len:
            raise UserInputError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}"
            )
        self.train.resolved_global_batch(self.data_parallel_degree())

    def data_parallel_degree(self) -> int:
        return self.scaling.num_workers // self.parallel.pipeline_stages

    def training_identity(self) -> str:
        """Hash of what determines the loss curve; a run directory keeps one identity.

        Cadence fields (logging, eval, checkpoints, halting), resources and the split of
        the global batch into micro-batches may change between submissions of the same run.
        """
        # The batch shape is checked on its own (run_state.claim): the global batch must stay the
        # same unless allowed, while micro-batch x accumulation may change with the worker count.
        identity = {
            "model": dataclasses.asdict(self.model),
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if k != "dataset_dir"},
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "train": {k: v for k, v in dataclasses.asdict(self.train).items() if k not in CADENCE_FIELDS},
            "deepspeed": dataclasses.asdict(self.deepspeed),
            # Activation checkpointing and compiled blocks compute the same numbers: either may be switched on a resume.
            "parallel": {k: v for k, v in dataclasses.asdict(self.parallel).items()
                         if k not in ("activation_checkpointing", "compile_blocks")},
        }
        if self.run.branch_from:  # a branch continues another run's curve: its origin is part of it
            identity["branch_from"] = self.run.branch_from
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
