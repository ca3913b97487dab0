"""What a sweep adds to the scaling-law report, and the files it keeps beside it.

`sweep.json` (written by the sweep, read by `orchestrator.report`) holds the design
(every trial's N, D, C, shape, steps and epochs), the learning-rate search, the
compute each schedule used against independent runs of the same grid, and how
busy the cluster was. Everything it names is relative to the sweep directory, so
a copy fetched from MLflow reports the same.

The sections it adds to the report: the trials; the law fitted with N counting the
output head's weights beside the non-embedding fit the recommendation uses; the
learning-rate search; the schedules' compute (and, for `sweep.schedule=both`, both
fits on the same grid side by side); the cluster's utilization.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.scaling_laws.fit import fit_sweep
from orchestrator.scaling_laws.points import Points, Trial, read_trials, write_trials
from orchestrator.scaling_laws.trial_records import OK, as_trial
from workloads.errors import UserInputError

SUMMARY_FILE = "sweep.json"
LR_SEARCH_FILE = "lr_search.json"
PRIMARY_TRIALS = "trials.json"  # orchestrator.report's TRIALS_FILE
N_LABEL = "non-embedding parameters"  # block weights and norms: no token embedding, no output head


def trial_files(schedule: str) -> dict[str, str]:
    """{group: file}: the primary group is what orchestrator.report fits and recommends from."""
    if schedule == "wsd":
        return {"wsd": PRIMARY_TRIALS}
    files = {"cosine": PRIMARY_TRIALS}
    if schedule == "both":
        files["wsd"] = "trials-wsd.json"
    return files


def write_trial_files(sweep_dir: Path, schedule: str, records: dict[str, dict[str, Any]]) -> dict[str, list[Trial]]:
    """trials.json (and trials-wsd.json for `both`) from the grid trials' records, plus lr_search.json."""
    groups: dict[str, list[Trial]] = {}
    for group, file in trial_files(schedule).items():
        groups[group] = [as_trial(r) for r in records.values() if r["kind"] == "grid" and r["group"] == group]
        write_trials(groups[group], sweep_dir / file)
    search = [r for r in records.values() if r["kind"] == "lr"]
    (sweep_dir / LR_SEARCH_FILE).write_text(
        json.dumps(
            [
                {k: r.get(k) for k in ("name", "size", "N", "lr_multiplier", "lr", "loss", "status", "reason")}
                for r in search
            ],
            indent=1,
        )
        + "\n"
    )
    return groups


def compute(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per group: FLOPs the sweep trained, and what independent runs of the same grid points cost."""
    totals: dict[str, dict[str, float]] = {}
    for r in records.values():
        group = totals.setdefault(r["group"], {"trained_flops": 0.0, "independent_flops": 0.0, "trials": 0})
        group["trained_flops"] += float(r.get("trained_flops") or 0.0)
        group["independent_flops"] += float(r["C"])
        group["trials"] += 1
    return totals


def utilization(records: list[dict[str, Any]], since: float, wall_s: float, cluster_cpus: float) -> dict[str, float]:
    """CPU-seconds of training steps, and of launching, over wall x cluster CPUs (this invocation's trials)."""
    timed = [r["timing"] for r in records if r.get("timing", {}).get("started", 0) >= since]
    capacity = wall_s * cluster_cpus
    train = sum(t["train_s"] * t["cpus"] for t in timed)
    launch = sum(t["launch_s"] * t["cpus"] for t in timed)
    return {
        "wall_s": wall_s,
        "cluster_cpus": cluster_cpus,
        "trials_run": len(timed),
        "utilization": train / capacity if capacity else 0.0,
        "launch_share": launch / capacity if capacity else 0.0,
        "train_cpu_s": train,
        "launch_cpu_s": launch,
    }


def write_summary(sweep_dir: Path, summary: dict[str, Any]) -> None:
    (sweep_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")


def read_summary(sweep_dir: Path) -> dict[str, Any] | None:
    path = sweep_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------- report sections


def add_sections(doc, sweep_dir: Path, summary: dict[str, Any], target: float, bootstrap: int, seed: int) -> None:
    """The sweep's sections, appended to the report's document (`orchestrator.scaling_laws.report`'s)."""
    files = summary["trial_files"]
    primary = read_trials(sweep_dir / PRIMARY_TRIALS)
    _trials_table(doc, summary)
    doc.heading("Which N: without and with the output head")
    doc.paragraph(
        f"The fits above and the recommendation count N as {N_LABEL}: every block weight and norm, not the token "
        "embedding nor the output head. The same trials fitted with N counting the "
        "output head's weights as well (vocab x d_model, a matmul every token even when tied to the embedding) "
        "give the second column. Compute is the same in both: each trial's exact training FLOPs."
    )
    fits = {}
    for label, points in (
        ("non-embedding (used)", _points(primary)),
        ("with output head", _points(primary, head=True)),
    ):
        fits[label] = _fit_or_reason(fit_sweep, points, bootstrap, seed)
    _fits_side_by_side(doc, fits, target)
    if summary.get("lr_search"):
        _lr_search(doc, summary["lr_search"])
    doc.heading("Schedules and compute")
    rows = []
    for group, totals in summary["compute"].items():
        saving = 1 - totals["trained_flops"] / totals["independent_flops"] if totals["independent_flops"] else 0.0
        what = {
            "cosine": "independent runs (cosine)",
            "wsd": "WSD: runs with cooldown branches",
            "lr": "learning-rate search",
            "verify": "verification run",
        }.get(group, group)
        rows.append(
            [
                what,
                str(int(totals["trials"])),
                _flops(totals["trained_flops"]),
                _flops(totals["independent_flops"]),
                f"{saving:.1%}",
            ]
        )
    doc.paragraph(
        "FLOPs each part of the sweep trained, against what independent runs of the same trials cost. "
        "A WSD branch trains only its cooldown: it starts from its main run's checkpoint where its own cooldown "
        f"begins (cooldown fraction {summary['cooldown_fraction']:g})."
    )
    doc.table(["trials", "count", "trained FLOPs", "as independent runs", "saved"], rows)
    if list(files) == ["wsd"]:
        doc.paragraph(
            "Only WSD runs were trained: sweep.schedule=both trains the same grid as independent runs too "
            "and fits the two side by side."
        )
    if len(files) > 1:
        doc.paragraph("The same grid trained both ways, each fitted on its own:")
        by_group = {
            f"{g} trials ({files[g]})": _fit_or_reason(
                fit_sweep, _points(read_trials(sweep_dir / files[g])), bootstrap, seed
            )
            for g in files
        }
        _fits_side_by_side(doc, by_group, target)
    timing = summary.get("utilization")
    if timing:
        doc.heading("Cluster utilization")
        doc.paragraph(
            f"Last invocation: {timing['trials_run']} trials trained in {timing['wall_s']:.0f} s on "
            f"{timing['cluster_cpus']:g} CPUs. Utilization (CPU-seconds of trial training steps / "
            "(wall x cluster CPUs)): "
            f"{timing['utilization']:.1%}. Launching trials (trainable start to first step): "
            f"{timing['launch_share']:.1%} of the same capacity; the rest went to evaluations, checkpoints, "
            "fitting and idle CPUs."
        )


def _trials_table(doc, summary: dict[str, Any]) -> None:
    doc.heading("Trials")
    doc.paragraph(
        f"{summary['tokens_per_step']:,} tokens per step; the training split holds {summary['train_tokens']:,} tokens "
        f"(epochs = D / that). N_head = N + the output head's weights; N_total = every trainable parameter."
    )
    rows = []
    for t in summary["trials"]:
        shape = t["shape"]
        how = f"branch of {t['branch_of']} at step {t['branch_step']}" if t.get("branch_of") else t["schedule"]
        if t.get("taken_from"):
            how += f" (= {t['taken_from']})"
        loss = t.get("loss")
        rows.append(
            [
                t["name"],
                _flops(t["N"]),
                _flops(t["N_head"]),
                _flops(t["N_total"]),
                _flops(t["D"]),
                _flops(t["C"]),
                f"{shape['n_layers']} x {shape['d_model']}, {shape['n_heads']} heads",
                f"{t['lr']:.3g}" if t.get("lr") else "",
                str(t["steps"]),
                f"{t['epochs']:.2f}",
                how,
                f"{loss:.4f}" if isinstance(loss, (int, float)) and math.isfinite(loss) else "",
                t["status"] + (f": {t['reason']}" if t.get("reason") else ""),
            ]
        )
    doc.table(
        [
            "trial",
            "N",
            "N_head",
            "N_total",
            "D",
            "C",
            "shape",
            "lr",
            "steps",
            "epochs",
            "schedule",
            "final loss",
            "status",
        ],
        rows,
    )


def _lr_search(doc, search: list[dict[str, Any]]) -> None:
    doc.heading("Learning-rate search")
    doc.paragraph(
        "Per size, the family's rate times each multiplier, at the size's smallest budget; the size's other "
        "trials use the best (lowest final loss)."
    )
    doc.table(
        ["size", "N", "multiplier", "lr", "final loss", "status", "best"],
        [
            [
                s["size"],
                _flops(s["N"]),
                f"{s['lr_multiplier']:g}",
                f"{s['lr']:.3g}" if s.get("lr") else "",
                f"{s['loss']:.4f}" if s.get("loss") is not None and math.isfinite(s["loss"]) else "",
                s["status"],
                "yes" if s.get("best") else "",
            ]
            for s in search
        ],
    )


def _points(trials: list[Trial], head: bool = False) -> Points:
    ok = [t for t in trials if t.status == OK]
    N = [t.shape["N_head"] if head else t.N for t in ok]
    return Points.from_arrays(
        N,
        [t.D for t in ok],
        [t.loss for t in ok],
        [t.flops for t in ok],
        source="trials (N with output head)" if head else "trials",
    )


def _fit_or_reason(fit_sweep, points: Points, bootstrap: int, seed: int):
    try:
        return fit_sweep(points, bootstrap=bootstrap, seed=seed)
    except UserInputError as err:
        return str(err)


def _fits_side_by_side(doc, fits: dict[str, Any], target: float) -> None:
    names = list(fits)
    rows = []
    for key, label in (("a", "a (N_opt ∝ C^a)"), ("b", "b (D_opt ∝ C^b)"), ("alpha", "α"), ("beta", "β"), ("E", "E")):
        row = [label]
        for fit in fits.values():
            if isinstance(fit, str):
                row.append("not fitted")
                continue
            estimate = fit.parameters()[key]
            row.append(
                f"{estimate.value:.3f}" + (f" [{estimate.ci[0]:.3f}, {estimate.ci[1]:.3f}]" if estimate.ci else "")
            )
        rows.append(row)
    row = [f"N_opt at C = {_flops(target)}"]
    for fit in fits.values():
        row.append("not fitted" if isinstance(fit, str) else _flops(fit.allocation(target)[0].value))
    rows.append(row)
    doc.table(["", *names], rows)
    for name, fit in fits.items():
        if isinstance(fit, str):
            doc.paragraph(f"{name}: not fitted: {fit}")


def _flops(x: float) -> str:
    if x is None or not np.isfinite(x):
        return ""
    return f"{x:.3g}" if 1e-2 <= abs(x) < 1e4 else f"{x:.2e}".replace("e+0", "e").replace("e+", "e")
