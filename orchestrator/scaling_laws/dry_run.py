"""`orchestrator.sweep --dry-run`: the designed grid, and its wall time estimated from step times measured here."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from orchestrator.launch.trainer import worker_threads
from orchestrator.scaling_laws.family import family_lr
from workloads.reference_loop import bare_loop

if TYPE_CHECKING:  # the sweep calls these functions: only its type is needed here
    from orchestrator.scaling_laws.sweep import Sweep

LAUNCH_S_ASSUMED = 15.0  # a trial's launch before its first step, when no trial of this sweep has measured one
MEASURED_STEPS = 4  # steps timed per size for --dry-run's estimate (the first is left out)


def measured_step_seconds(sweep: Sweep) -> dict[str, float]:
    """Seconds per optimizer step of each size, timed in this process with the trial's threads (CPU trials)."""
    seconds = {}
    for spec in sweep.design.specs:
        if spec.size.key in seconds:
            continue
        cfg = sweep.trial_config(spec, 1.0)
        stamps = bare_loop(
            cfg.model,
            cfg.train,
            sweep.dataset_dir,
            MEASURED_STEPS,
            worker_threads(cfg.scaling.cpus_per_worker),
            compiled=cfg.parallel.compile_blocks,
            shuffle_seed=cfg.data.shuffle_seed,
        )
        seconds[spec.size.key] = (
            statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:])) / cfg.scaling.num_workers
        )
    return seconds


def estimate_wall(sweep: Sweep, slots: int, step_s: dict[str, float]) -> tuple[float, float]:
    """(seconds, assumed launch seconds): the trials laid greedily on `slots` in launch order."""
    launches = [r["timing"]["launch_s"] for r in sweep.records.values() if r.get("timing", {}).get("launch_s")]
    launch = statistics.median(launches) if launches else LAUNCH_S_ASSUMED
    train = sweep.base.train
    eval_steps = sweep.tree.sweep.evals_per_trial * train.eval_samples / (3 * train.resolved_global_batch(1))
    free = [0.0] * max(1, slots)
    for spec in sweep.design.specs:
        if spec.reuse_search:
            continue
        i = free.index(min(free))
        free[i] += launch + (spec.trained_steps + eval_steps) * step_s[spec.size.key]
    return max(free), launch


def print_grid(sweep: Sweep, slots: int) -> None:
    d = sweep.design
    print(
        f"sweep {sweep.tree.run.name}: {len(d.specs)} trials, {d.tokens_per_step:,} tokens per step, "
        f"training split {d.train_tokens:,} tokens, {slots} trial(s) at a time"
    )
    header = (
        f"{'trial':<28}{'N':>10}{'N+head':>10}{'N_total':>10}{'D':>11}{'C':>11}  {'shape':<16}"
        f"{'steps':>7}{'epochs':>8}  schedule"
    )
    print(header)
    for s in d.specs:
        m = s.size.model
        how = f"branch of {s.branch_of} @ {s.branch_step}" if s.branch_of else s.schedule
        lr = (
            "lr search"
            if s.lr_multiplier is None
            else f"lr {family_lr(s.size, sweep.tree.family) * s.lr_multiplier:.3g}"
        )
        flag = "  <- more than sweep.max_epochs" if s.epochs > sweep.tree.sweep.max_epochs else ""
        print(
            f"{s.name:<28}{s.size.N:>10.3g}{s.size.N_head:>10.3g}{s.size.N_total:>10.3g}{s.D:>11.3g}{s.C:>11.3g}  "
            f"{f'{m.n_layers}x{m.d_model}/{m.n_heads}h':<16}{s.steps:>7}{s.epochs:>8.2f}  {how}, {lr}"
            + (", = its lr search" if s.reuse_search else "")
            + flag
        )
    for problem in d.problems:
        print(f"sweep: problem: {problem}")
