"""What every training stage hands the one training loop (`workloads.loop`).

A stage brings its data, its model, its loss and its metrics; the loop brings the
rest, the same for all: the DeepSpeed engine's life cycle, the global sample order,
checkpoints and resume on any worker count, sample accounting, progress lines and
metrics, and evaluation at a fixed cadence. Pretraining, SFT, reward modelling and
DPO are each a `Stage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from workloads.model import ModelConfig
from workloads.parallel.blocks import checkpoint_blocks, compile_blocks
from workloads.parallel.config import ParallelConfig
from workloads.parallel.engine import DeepSpeedConfig, build_engine
from workloads.train_config import TrainConfig


@dataclass
class WorkerPlan:
    """Everything a worker needs, resolved by the driver."""

    stage: str
    model: ModelConfig
    train: TrainConfig
    deepspeed: DeepSpeedConfig
    parallel: ParallelConfig
    shuffle_seed: int
    dataset_dir: str
    run_dir: str
    threads_per_worker: int
    options: dict[str, Any] = field(default_factory=dict)  # the stage's own config section, as a dict

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> WorkerPlan:
        return cls(
            stage=payload["stage"],
            model=ModelConfig(**payload["model"]),
            train=TrainConfig(**payload["train"]),
            deepspeed=DeepSpeedConfig(**payload["deepspeed"]),
            parallel=ParallelConfig(**payload["parallel"]),
            **{k: payload[k] for k in ("shuffle_seed", "dataset_dir", "run_dir", "threads_per_worker", "options")},
        )


class Stage:
    """The stage-specific half of training. Subclasses set the data in `__init__` and override
    `train_step` and `evaluate`; the defaults build a plain (non-pipeline) engine."""

    name = ""
    evaluate_at_start = False  # score the starting weights before the first step (the baseline of a fine-tune)

    def __init__(self, plan: WorkerPlan, device: torch.device, on_gpu: bool):
        self.plan = plan
        self.device = device
        self.on_gpu = on_gpu

    # -- data ---------------------------------------------------------------------
    @property
    def num_train_samples(self) -> int:
        raise NotImplementedError

    @property
    def tokens_per_sample(self) -> int:
        """Tokens one sample puts through the model (for tokens/s and MFU)."""
        raise NotImplementedError

    # -- model and engine -----------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def build_engine(self, world: int, overrides: dict[str, Any] | None):
        """(engine, data-parallel rank, data-parallel degree) for this rank."""
        model = self.build_model()
        if self.plan.parallel.activation_checkpointing:
            checkpoint_blocks(getattr(model, "backbone", model))
        if self.plan.parallel.compile_blocks:
            compile_blocks(getattr(model, "backbone", model).blocks)
        engine = build_engine(model, self.plan.deepspeed, self.plan.train, world, self.on_gpu, overrides)

        rank = dist.get_rank() if dist.is_initialized() else 0
        return engine, rank, world

    def reads_data(self, engine) -> bool:
        return True

    # -- the work ---------------------------------------------------------------------
    step_metrics_are_global = False  # True when train_step already returns means over every rank

    def train_step(self, engine, micro_batches: list[np.ndarray]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; this rank's means, "train/loss" among them."""
        raise NotImplementedError

    def evaluate(self, engine, dp_rank: int, dp_world: int) -> dict[str, float]:
        """Held-out metrics over every rank ("eval/loss" among them: it ranks the best checkpoint)."""
        raise NotImplementedError

    def describe(self) -> dict[str, bytes]:
        """Files the chief writes into every checkpoint so that it loads on its own."""
        raise NotImplementedError

    def progress(self, metrics: dict[str, float]) -> str:
        """The stage's part of a progress line."""
        return f"loss {metrics['train/loss']:.4f}"

    def eval_line(self, metrics: dict[str, float]) -> str:
        return " | ".join(f"{key.removeprefix('eval/')} {value:.4f}" for key, value in metrics.items())
