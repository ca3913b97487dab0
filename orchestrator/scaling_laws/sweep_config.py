"""The config tree of `orchestrator.sweep`: where it runs, what it sweeps, the model family.

Everything a trial trains with beyond its shape, learning rate and length comes
from a pretrain recipe (`sweep.base` plus `sweep.base_overrides`), parsed by
the pretrain driver (`orchestrator.stages.pretrain.PRETRAIN`) exactly as `python -m orchestrator.pretrain`
would parse it, so a trial is a pretrain run and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.sections import TrackingConfig
from orchestrator.config.tree import ConfigTree
from workloads.errors import UserInputError
from workloads.schema import option

SCHEDULES = ("cosine", "wsd", "both")


@dataclass
class SweepRunConfig:
    """Naming and location of a sweep: running the same name again finishes what is unfinished."""

    name: str = option(
        "sweep", "sweep name: its directory is <output_dir>/<name>; running it again re-runs only what is unfinished"
    )
    output_dir: str = option(
        "runs",
        "root for the shared dataset (<output_dir>/datasets), the sweep directory and every trial's run directory",
    )

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UserInputError(f"run.name: '{self.name}' must be a non-empty name without '/'")

    def sweep_dir(self) -> Path:
        return Path(self.output_dir).resolve() / self.name


@dataclass
class SweepConfig:
    """The grid: compute budgets, sizes per budget, schedules, learning-rate search, fit and verification."""

    base: str = option("tiny", "pretrain recipe (shipped name or YAML file) every trial starts from")
    base_overrides: list = option([], "pretrain overrides applied to the base, e.g. ['--train.micro_batch_size=8']")
    budgets: list = option([], "compute budgets C in training FLOPs (exact FLOPs per token x tokens, not 6ND)")
    sizes_per_budget: int = option(4, "model sizes trained per budget, spaced by size_step in non-embedding parameters")
    size_step: float = option(
        2.0, "ratio of neighbouring sizes on the family's ladder of sizes (shared by all budgets)"
    )
    tokens_per_parameter: float = option(
        20.0, "prior D/N that centres each budget's sizes: N_centre = sqrt(C / (6 x tokens_per_parameter))"
    )
    grid: list = option([], "explicit [N, D] pairs (non-embedding parameters, tokens) instead of budgets x sizes")
    min_steps: int = option(20, "refuse a grid in which some trial trains fewer optimizer steps than this")
    max_epochs: float = option(
        4.0, "refuse a grid in which some trial needs more epochs of the training corpus than this"
    )
    schedule: str = option(
        "cosine",
        "cosine: independent runs | wsd: per size one warmup-stable run with cooldown branches | "
        "both: the same grid both ways, fitted side by side",
    )
    cooldown_fraction: float = option(
        0.2, "wsd: share of each trial's steps spent cooling down (linear decay to train.min_lr_ratio)"
    )
    warmup_fraction: float = option(0.1, "warmup steps per size: this share of the size's shortest trial")
    evals_per_trial: int = option(8, "validation passes per trial (its curve); one is always at the end")
    tune_lr: bool = option(
        False, "search lr_multipliers x the family's rate per size at its smallest budget; the grid uses the best"
    )
    lr_multipliers: list = option([0.5, 1.0, 2.0], "tune_lr: multipliers of the family's learning rate to try")
    target_flops: float = option(
        0.0, "budget to recommend a config for (a pretrain recipe file); 0 = 10x the largest budget"
    )
    verify: bool = option(
        True, "after the fit, train the recommended config at verify_flops and compare its loss with the prediction"
    )
    verify_flops: float = option(0.0, "budget of the verification run; 0 = 4x the largest budget")
    max_concurrent: int = option(0, "trials at once; 0 = as many as the cluster's CPUs and GPUs hold")
    bootstrap: int = option(200, "bootstrap resamples for the fits' intervals")

    def validate(self) -> None:
        if not self.base:
            raise UserInputError("sweep.base: empty; name a pretrain recipe or YAML file")
        if not all(isinstance(a, str) and a.startswith("--") for a in self.base_overrides):
            raise UserInputError(
                f"sweep.base_overrides: {self.base_overrides!r} must be a list of '--section.field=value' strings"
            )
        # YAML reads 1e10 (no dot, no exponent sign) as text: numbers in lists are taken in any spelling.
        self.budgets = [_number(v, "sweep.budgets", "a positive number of FLOPs") for v in self.budgets]
        self.lr_multipliers = [_number(v, "sweep.lr_multipliers", "a positive multiplier") for v in self.lr_multipliers]
        for pair in self.grid:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise UserInputError(f"sweep.grid: {pair!r} is not an [N, D] pair")
        self.grid = [[_number(v, "sweep.grid", "a positive N or D") for v in pair] for pair in self.grid]
        if not self.grid:
            if not self.budgets:
                raise UserInputError("sweep.budgets: empty; give compute budgets in FLOPs (or sweep.grid)")
            if self.sizes_per_budget < 1:
                raise UserInputError(f"sweep.sizes_per_budget: must be >= 1, got {self.sizes_per_budget}")
        if not self.size_step > 1:
            raise UserInputError(f"sweep.size_step: must be > 1, got {self.size_step}")
        if not self.tokens_per_parameter > 0:
            raise UserInputError(f"sweep.tokens_per_parameter: must be > 0, got {self.tokens_per_parameter}")
        if self.schedule not in SCHEDULES:
            raise UserInputError(f"sweep.schedule: '{self.schedule}' is not one of {', '.join(SCHEDULES)}")
        if not 0 < self.cooldown_fraction < 1:
            raise UserInputError(f"sweep.cooldown_fraction: must be in (0, 1), got {self.cooldown_fraction}")
        if not 0 <= self.warmup_fraction < 1:
            raise UserInputError(f"sweep.warmup_fraction: must be in [0, 1), got {self.warmup_fraction}")
        for name in ("min_steps", "evals_per_trial"):
            if getattr(self, name) < 1:
                raise UserInputError(f"sweep.{name}: must be >= 1, got {getattr(self, name)}")
        if not self.max_epochs > 0:
            raise UserInputError(f"sweep.max_epochs: must be > 0, got {self.max_epochs}")
        if not self.lr_multipliers:
            raise UserInputError("sweep.lr_multipliers: empty; give multipliers of the family's learning rate")
        for name in ("target_flops", "verify_flops"):
            if getattr(self, name) < 0:
                raise UserInputError(f"sweep.{name}: must be >= 0, got {getattr(self, name)}")
        if self.max_concurrent < 0:
            raise UserInputError(f"sweep.max_concurrent: must be >= 0, got {self.max_concurrent}")
        if self.bootstrap < 0:
            raise UserInputError(f"sweep.bootstrap: must be >= 0, got {self.bootstrap}")


def _number(value, key: str, what: str) -> float:
    """A positive finite number from a YAML or command-line list entry (a number or its text)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise UserInputError(f"{key}: {value!r} is not {what}")
    return number


@dataclass
class FamilyConfig:
    """How depth, width and heads grow with size, and the learning rate per size."""

    head_dim: int = option(32, "width of one attention head: d_model is a multiple of it, n_heads = d_model / head_dim")
    aspect_ratio: float = option(
        32.0,
        "d_model / n_layers the family keeps as it grows: n_layers = round((N / (12 aspect^2))^(1/3)), "
        "then the multiple of head_dim whose exact N is nearest",
    )
    lr: float = option(3e-3, "peak learning rate at d_model = lr_width")
    lr_width: int = option(64, "the width lr is given for")
    lr_width_power: float = option(
        0.5,
        "lr(size) = lr x (lr_width / d_model)^lr_width_power: wider models take smaller steps "
        "(1.0 is muP's hidden-layer rule)",
    )

    def validate(self) -> None:
        if self.head_dim < 2 or self.head_dim % 2:
            raise UserInputError(
                f"family.head_dim: must be an even number >= 2 (RoPE rotates pairs), got {self.head_dim}"
            )
        if not self.aspect_ratio > 0:
            raise UserInputError(f"family.aspect_ratio: must be > 0, got {self.aspect_ratio}")
        if not self.lr > 0:
            raise UserInputError(f"family.lr: must be > 0, got {self.lr}")
        if self.lr_width < 1:
            raise UserInputError(f"family.lr_width: must be >= 1, got {self.lr_width}")
        if self.lr_width_power < 0:
            raise UserInputError(f"family.lr_width_power: must be >= 0, got {self.lr_width_power}")


@dataclass
class SweepTree(ConfigTree):
    """The whole tree of a sweep."""

    run: SweepRunConfig = dataclasses.field(default_factory=SweepRunConfig)
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)
    family: FamilyConfig = dataclasses.field(default_factory=FamilyConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
