"""One record per trial, written into the trial's run directory when the trial ends.

The record is what a re-run of the sweep reads back instead of training again,
and what the fits, the report and the MLflow parent run are made from. It says
how the trial ended: "ok"; "diverged" (a non-finite loss, or a final validation
loss above the first training loss: kept and reported, never fitted, never
re-run); "crashed" (an exception: re-run by the next invocation, resuming from
the trial's checkpoints); "failed" (not run, e.g. the run it branches from failed).

Timing comes from the trial's own `metrics.jsonl` (one line per step, stamped by
rank 0): time spent launching (trainable start to the end of the first step,
less one step), time in training steps, and the CPUs that trained them.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from orchestrator.scaling_laws.points import Trial
from workloads.metrics_log import read_metrics

RECORD_FILE = "sweep_trial.json"
OK, DIVERGED, CRASHED, FAILED = "ok", "diverged", "crashed", "failed"
FINAL_STATUSES = (OK, DIVERGED, FAILED)  # a crashed trial is tried again by the next invocation


def record_path(run_dir: Path) -> Path:
    return Path(run_dir) / RECORD_FILE


def read_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(run_dir).read_text())
    except (OSError, ValueError):
        return None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Atomically: a record half written when the driver died must read as no record."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RECORD_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(record_path(run_dir))


def is_finished(record: dict[str, Any] | None) -> bool:
    return record is not None and record["status"] in FINAL_STATUSES


def series(lines: list[dict[str, Any]], key: str) -> dict[int, float]:
    """{step: value}; a resumed run's later lines win."""
    return {int(line["step"]): float(line[key]) for line in lines if key in line}


def assess(run_dir: Path, final: dict[str, Any], origin_run_dir: Path | None = None) -> tuple[str, str]:
    """(status, reason) of a trial that ran to its end: ok, or diverged and why.

    "Where it started" is the loss of its first step, for a branch that of the run it
    branched from (its own first step follows a stretch of training already).
    """
    lines = read_metrics(run_dir)
    for key, label in (("train/loss", "training loss"), ("eval/loss", "validation loss")):
        for step, value in sorted(series(lines, key).items()):
            if not math.isfinite(value):
                return DIVERGED, f"{label} {value} at step {step}"
    final_loss = final.get("eval/loss")
    if final_loss is None or not math.isfinite(final_loss):
        return DIVERGED, f"final validation loss {final_loss}"
    train = series(read_metrics(origin_run_dir) if origin_run_dir else lines, "train/loss")
    if train:
        first_step = min(train)
        if final_loss > train[first_step]:
            return DIVERGED, (
                f"final validation loss {final_loss:.4f} ends above the training loss it started from "
                f"({train[first_step]:.4f} at step {first_step})"
            )
    return OK, ""


def curve(run_dir: Path, tokens_per_step: int, up_to_step: int | None = None) -> list[list[float]]:
    """[tokens seen, validation loss] at every evaluation (finite ones), optionally only up to a step."""
    evals = series(read_metrics(run_dir), "eval/loss")
    return [
        [step * tokens_per_step, loss]
        for step, loss in sorted(evals.items())
        if step > 0 and math.isfinite(loss) and loss > 0 and (up_to_step is None or step <= up_to_step)
    ]


def timing(run_dir: Path, started: float, ended: float, cpus: float) -> dict[str, float]:
    """Launch and training-step seconds of this invocation of a trial, from its metrics record.

    A step's duration is the gap between consecutive step lines; gaps that also hold an
    evaluation or a checkpoint (more than 3x the median) count as neither training nor launch.
    """
    stamps = sorted(
        (int(line["step"]), float(line["time"]))
        for line in read_metrics(run_dir)
        if "train/loss" in line and float(line["time"]) >= started
    )
    result = {
        "started": started,
        "ended": ended,
        "cpus": cpus,
        "steps": len(stamps),
        "launch_s": ended - started,
        "train_s": 0.0,
    }
    if not stamps:
        return result
    gaps = [b[1] - a[1] for a, b in zip(stamps, stamps[1:]) if b[0] == a[0] + 1]
    typical = statistics.median(gaps) if gaps else 0.0
    result["train_s"] = typical + sum(g for g in gaps if g <= 3 * typical)
    result["launch_s"] = max(0.0, stamps[0][1] - typical - started)
    result["step_s"] = typical
    return result


def as_trial(record: dict[str, Any]) -> Trial:
    """The record as `orchestrator.scaling_laws.points.Trial` (what trials.json holds and the fits read)."""
    loss = record.get("loss")
    fitted = record["status"] == OK
    return Trial(
        name=record["name"],
        N=float(record["N"]),
        N_total=float(record["N_total"]),
        D=float(record["D"]),
        C=float(record["C"]),
        loss=loss if (loss is not None and math.isfinite(loss) and loss > 0) else None,
        status=OK if fitted else record["status"],
        reason=record.get("reason", ""),
        curve=[tuple(point) for point in record.get("curve", [])],
        shape=dict(record.get("shape", {})),
        lr=record.get("lr"),
    )
