"""The grid a sweep trains: which sizes at which budgets, how long, on which schedule.

IsoFLOP grid (`sweep.budgets`): sizes sit on one ladder shared by all budgets,
N_j = size_step^j non-embedding parameters (so that neighbouring budgets share
sizes, which WSD branches exploit). Each budget C takes the `sizes_per_budget`
rungs around N_centre = sqrt(C / (6 x tokens_per_parameter)); each rung becomes
the family's nearest shape, and its token count is D = C / training_flops_per_token
(the exact FLOPs of that shape, never 6N), rounded to whole optimizer steps. An
explicit grid (`sweep.grid`) gives [N, D] pairs instead.

Schedules. `cosine`: every trial is an independent run with its own warmup and
cosine decay. `wsd`: per size, one warmup-stable-decay run to the largest token
count the size needs; every smaller token count is a branch started from that
run's checkpoint where its own cooldown must begin (`run.branch_from`), cooling down
over `cooldown_fraction` of its steps. Up to the branch point the main run and an
independent WSD run of the branch's length are the same run (same initialisation,
data order and learning rate), so each branch is exactly such a run, for a fraction
of its compute. `both`: the cosine grid and the WSD grid, fitted side by side.

Warmup is per size: `warmup_fraction` of the size's shortest trial, the same for
all its trials, so that branches and independent runs warm up alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.scaling_laws.family import Size, size_for
from orchestrator.scaling_laws.sweep_config import SweepTree
from orchestrator.stages.pretrain import PretrainConfig
from workloads.errors import UserInputError

GRID, LR_SEARCH, VERIFY = "grid", "lr", "verify"
INDEPENDENT, WSD = "cosine", "wsd"


@dataclass
class TrialSpec:
    """One trial to train (or to take over from the learning-rate search)."""

    name: str
    kind: str  # GRID, LR_SEARCH or VERIFY
    schedule: str  # INDEPENDENT (cosine) or WSD
    size: Size
    budget: float  # the nominal budget of its IsoFLOP curve (its own C for an explicit grid)
    steps: int
    D: int  # tokens: steps x tokens per step
    C: float  # exact training FLOPs: training_flops_per_token x D
    warmup: int
    epochs: float
    lr_multiplier: float | None = 1.0  # None: the learning-rate search of its size decides
    lr_search: list[str] = field(default_factory=list)  # the search trials of its size it waits for
    reuse_search: bool = False  # its record is the best search trial's (same config), not trained again
    branch_of: str = ""  # the WSD run it branches from
    branch_step: int = 0
    checkpoint_steps: list[int] = field(default_factory=list)  # where its branches start
    group: str = INDEPENDENT  # which fit it belongs to (both schedules of a `both` sweep are fitted apart)

    @property
    def trained_steps(self) -> int:
        """Steps this trial trains itself (a branch starts at its branch step)."""
        return self.steps - self.branch_step

    def trained_flops(self, tokens_per_step: int, seq_len: int) -> float:
        return float(self.size.flops_per_token(seq_len)) * self.trained_steps * tokens_per_step

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "schedule": self.schedule,
            "group": self.group,
            "size": self.size.key,
            "N": self.size.N,
            "N_head": self.size.N_head,
            "N_total": self.size.N_total,
            "shape": self.size.shape(),
            "budget": self.budget,
            "steps": self.steps,
            "D": self.D,
            "C": self.C,
            "warmup": self.warmup,
            "epochs": self.epochs,
            "lr_multiplier": self.lr_multiplier,
            "branch_of": self.branch_of,
            "branch_step": self.branch_step,
            "reuse_search": self.reuse_search,
        }


@dataclass
class Design:
    specs: list[TrialSpec]  # launch order: searches first, then the longest trials, branches last
    tokens_per_step: int
    seq_len: int
    train_tokens: int
    problems: list[str]  # what makes the grid untrainable (too few steps, too many epochs): refused unless dry-run

    def by_name(self) -> dict[str, TrialSpec]:
        return {s.name: s for s in self.specs}

    @property
    def budgets(self) -> list[float]:
        return sorted({s.budget for s in self.specs if s.kind == GRID})


def decay_start(steps: int, cooldown_fraction: float) -> int:
    """Where a WSD run of `steps` starts cooling down (as workloads.lr_schedule computes it)."""
    return steps - max(1, round(cooldown_fraction * steps))


def ladder_sizes(C: float, tree: SweepTree, base: PretrainConfig) -> list[Size]:
    """The budget's sizes: sizes_per_budget rungs of the shared ladder around its centre, distinct shapes only."""
    sweep = tree.sweep
    centre = math.sqrt(C / (6 * sweep.tokens_per_parameter))
    middle = round(math.log(centre) / math.log(sweep.size_step))
    first = middle - (sweep.sizes_per_budget - 1) // 2
    sizes: dict[str, Size] = {}
    for rung in range(first, first + sweep.sizes_per_budget):
        size = size_for(sweep.size_step**rung, base.model, tree.family)
        sizes.setdefault(size.key, size)
    return sorted(sizes.values(), key=lambda s: s.N)


def design(tree: SweepTree, base: PretrainConfig, train_tokens: int) -> Design:
    """The sweep's trials; `train_tokens` is the training split's size (for epochs)."""
    sweep = tree.sweep
    seq_len = base.data.seq_len
    tokens_per_step = base.train.resolved_global_batch(base.data_parallel_degree()) * seq_len
    points: list[tuple[float, Size, int]] = []  # (budget, size, steps)
    if sweep.grid:
        for N, D in sweep.grid:
            size = size_for(N, base.model, tree.family)
            steps = max(1, round(D / tokens_per_step))
            points.append((float(size.flops_per_token(seq_len)) * steps * tokens_per_step, size, steps))
    else:
        for C in sorted(sweep.budgets):
            for size in ladder_sizes(C, tree, base):
                steps = max(1, round(C / (size.flops_per_token(seq_len) * tokens_per_step)))
                points.append((C, size, steps))

    warmups: dict[str, int] = {}
    for _, size, steps in points:
        warmup = round(sweep.warmup_fraction * steps)
        warmups[size.key] = min(warmups.get(size.key, warmup), warmup)

    def spec(budget: float, size: Size, steps: int, schedule: str, prefix: str, **extra) -> TrialSpec:
        D = steps * tokens_per_step
        return TrialSpec(
            name=f"{prefix}C{budget:.3g}-{size.key}",
            kind=GRID,
            schedule=schedule,
            size=size,
            budget=budget,
            steps=steps,
            D=D,
            C=float(size.flops_per_token(seq_len)) * D,
            warmup=warmups[size.key],
            epochs=D / train_tokens,
            group=schedule,
            **extra,
        )

    both = sweep.schedule == "both"
    specs: list[TrialSpec] = []
    if sweep.schedule in (INDEPENDENT, "both"):
        specs += [spec(C, size, steps, INDEPENDENT, "cos-" if both else "") for C, size, steps in points]
    if sweep.schedule in (WSD, "both"):
        specs += wsd_specs(points, spec, sweep.cooldown_fraction, warmups, "wsd-" if both else "")
    if sweep.tune_lr:
        specs = with_lr_search(specs, sweep.lr_multipliers, WSD if sweep.schedule == WSD else INDEPENDENT)
    problems = grid_problems(specs, sweep.min_steps, sweep.max_epochs)
    order = {GRID: 1, LR_SEARCH: 0}
    specs.sort(key=lambda s: (order[s.kind], bool(s.branch_of), -s.trained_steps))
    return Design(specs, tokens_per_step, seq_len, train_tokens, problems)


def wsd_specs(points, spec, cooldown_fraction: float, warmups: dict[str, int], prefix: str) -> list[TrialSpec]:
    """Per size: the longest trial as the WSD main run, the others branched off it where their cooldown starts."""
    by_size: dict[str, list[tuple[float, Size, int]]] = {}
    for point in points:
        by_size.setdefault(point[1].key, []).append(point)
    specs = []
    for key, members in by_size.items():
        members.sort(key=lambda p: p[2])
        C_main, size, main_steps = members[-1]
        main = spec(C_main, size, main_steps, WSD, prefix)
        specs.append(main)
        for C, _, steps in members[:-1]:
            start = decay_start(steps, cooldown_fraction)
            if warmups[key] < start < decay_start(main_steps, cooldown_fraction):
                main.checkpoint_steps.append(start)
                specs.append(spec(C, size, steps, WSD, prefix, branch_of=main.name, branch_step=start))
            else:  # its cooldown would begin inside warmup: train it on its own
                specs.append(spec(C, size, steps, WSD, prefix))
    return specs


def with_lr_search(specs: list[TrialSpec], multipliers: list[float], schedule: str) -> list[TrialSpec]:
    """Add the learning-rate search: per size, one trial per multiplier at the size's smallest budget.

    The size's trials then wait for the search and train at its best rate; the search trial
    at that rate is the same run as the size's smallest-budget trial of the searched
    schedule, so that trial takes over its record instead of training again.
    """
    searches: list[TrialSpec] = []
    for key in dict.fromkeys(s.size.key for s in specs):
        mine = [s for s in specs if s.size.key == key]
        # The searched schedule's smallest trial; a branch trains the same run as an independent one of its length.
        first = min((s for s in mine if s.schedule == schedule), key=lambda s: s.steps, default=None)
        template = first or min(mine, key=lambda s: s.steps)
        names = []
        for m in multipliers:
            search = TrialSpec(
                name=f"lr-{key}-x{m:g}",
                kind=LR_SEARCH,
                schedule=schedule,
                size=template.size,
                budget=template.budget,
                steps=template.steps,
                D=template.D,
                C=template.C,
                warmup=template.warmup,
                epochs=template.epochs,
                lr_multiplier=m,
                group="lr",
            )
            searches.append(search)
            names.append(search.name)
        for s in mine:
            s.lr_multiplier, s.lr_search = None, names
        if first is not None:
            first.reuse_search = True
            if first.branch_of:  # its main run need not stop to checkpoint for it
                main = next(s for s in specs if s.name == first.branch_of)
                main.checkpoint_steps.remove(first.branch_step)
                first.branch_of, first.branch_step = "", 0
    return searches + specs


def grid_problems(specs: list[TrialSpec], min_steps: int, max_epochs: float) -> list[str]:
    problems = []
    for s in specs:
        if s.steps < min_steps:
            problems.append(
                f"{s.name} trains {s.steps} steps (sweep.min_steps={min_steps}): raise its budget or lower the sizes"
            )
        if s.epochs > max_epochs:
            problems.append(
                f"{s.name} needs {s.epochs:.2f} epochs of the corpus (sweep.max_epochs={max_epochs:g}): "
                "use a larger corpus or smaller budgets"
            )
    return problems


def check_buildable(sizes: dict[str, Size]) -> None:
    """Every shape of the grid is a valid model config (e.g. a head dim RoPE can rotate)."""
    for size in sizes.values():
        try:
            size.model.validate()
        except UserInputError as err:
            raise UserInputError(f"family: size {size.key} is not a valid model: {err}") from None
