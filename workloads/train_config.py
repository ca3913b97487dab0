"""The `train.` section: steps, batch arithmetic, optimizer, schedule, cadence."""

from __future__ import annotations

from dataclasses import dataclass

from workloads.errors import UserInputError
from workloads.schema import option

SCHEDULES = ("cosine", "wsd")
# Fields that may change between submissions of the same run: cadence (logging, evaluation,
# checkpoints, halting), retention, MFU accounting and how the global batch is split into
# micro-batches (the global batch itself is checked on its own when a run resumes).
CADENCE_FIELDS = frozenset(
    {
        "halt_at_step",
        "log_interval",
        "eval_interval",
        "eval_samples",
        "checkpoint_interval",
        "peak_flops_per_device",
        "keep_checkpoints",
        "keep_best_checkpoint",
        "micro_batch_size",
        "grad_accum_steps",
        "global_batch_size",
    }
)


@dataclass
class TrainConfig:
    """Optimisation: steps, batch sizes, AdamW, learning-rate schedule, eval and checkpoint cadence."""

    max_steps: int = option(200, "optimizer steps to train for (one step = one global batch)")
    micro_batch_size: int = option(8, "sequences per worker per forward/backward pass")
    grad_accum_steps: int = option(1, "micro-batches accumulated per optimizer step on each worker")
    halt_at_step: int = option(
        0, "stop with a checkpoint after this step, as if interrupted (resubmit to continue); 0 = run to max_steps"
    )
    global_batch_size: int = option(
        0,
        "sequences per optimizer step over all workers; 0 = micro_batch_size x grad_accum_steps x data-parallel degree",
    )
    lr: float = option(1e-3, "peak learning rate")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = option(20, "linear warmup steps from 0 to the peak learning rate")
    schedule: str = option("cosine", "learning-rate decay after warmup: cosine | wsd (warmup-stable-decay)")
    decay_fraction: float = option(0.2, "wsd only: share of max_steps spent decaying at the end")
    weight_decay: float = option(0.1, "AdamW weight decay, applied to matrices only (not norms)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    eps: float = option(1e-8, "AdamW epsilon")
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 disables")
    seed: int = option(1337, "seed for weight initialisation (the data order seed is data.shuffle_seed)")
    log_interval: int = option(10, "steps between progress lines and step metrics")
    eval_interval: int = option(100, "steps between validation passes (and one at the end)")
    eval_samples: int = option(64, "validation sequences per evaluation (the same ones every time)")
    checkpoint_interval: int = option(100, "steps between checkpoints (and one at the end); 0 = only at the end")
    keep_checkpoints: int = option(
        0, "keep only the newest N checkpoints (older ones go only after a newer one is committed); 0 = keep all"
    )
    keep_best_checkpoint: bool = option(
        True,
        "also keep the checkpoint with the lowest validation loss (of those taken at an eval step) as "
        "<run>/best_checkpoint",
    )
    peak_flops_per_device: float = option(
        0.0, "dense peak FLOP/s of one device for MFU; 0 = look up the GPU model, or measure a matmul on CPU"
    )

    def validate(self) -> None:
        positive = (
            "max_steps",
            "micro_batch_size",
            "grad_accum_steps",
            "log_interval",
            "eval_interval",
            "eval_samples",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserInputError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise UserInputError(f"train.schedule: '{self.schedule}' is not one of {', '.join(SCHEDULES)}")
        if self.lr <= 0:
            raise UserInputError(f"train.lr: must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserInputError(f"train.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise UserInputError(f"train.decay_fraction: must be in (0, 1], got {self.decay_fraction}")
        for name in ("warmup_steps", "checkpoint_interval", "global_batch_size", "halt_at_step", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise UserInputError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise UserInputError(f"train.grad_clip: must be >= 0, got {self.grad_clip}")

    def resolved_global_batch(self, data_parallel: int) -> int:
        """The global batch, checked against what micro-batch x accumulation x data-parallel can make."""
        made = self.micro_batch_size * self.grad_accum_steps * data_parallel
        if self.global_batch_size and self.global_batch_size != made:
            raise UserInputError(
                f"train.global_batch_size={self.global_batch_size} cannot be made from micro_batch_size "
                f"{self.micro_batch_size} x grad_accum_steps {self.grad_accum_steps} x data-parallel degree "
                f"{data_parallel} = {made}"
            )
        return made
