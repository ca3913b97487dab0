"""A trial's record: diverged on a non-finite loss or a loss ending above its start."""

from __future__ import annotations

import json
import math
from pathlib import Path

from orchestrator.scaling_laws.points import Points
from orchestrator.scaling_laws.trial_records import DIVERGED, OK, as_trial, assess


def write_metrics(run_dir: Path, train: dict[int, float], evals: dict[int, float]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"step": s, "time": float(s), "train/loss": v} for s, v in train.items()]
    lines += [{"step": s, "time": float(s), "eval/loss": v} for s, v in evals.items()]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run_dir


def test_a_trial_diverges_on_a_non_finite_loss_or_ending_above_its_start(tmp_path):
    ok = write_metrics(tmp_path / "ok", {1: 6.2, 2: 5.0, 3: 4.1}, {3: 4.3})
    assert assess(ok, {"eval/loss": 4.3}) == (OK, "")
    nan = write_metrics(tmp_path / "nan", {1: 6.2, 2: math.nan, 3: math.nan}, {3: math.nan})
    assert assess(nan, {"eval/loss": math.nan}) == (DIVERGED, "training loss nan at step 2")
    up = write_metrics(tmp_path / "up", {1: 6.2, 2: 7.5, 3: 9.0}, {3: 8.8})
    status, reason = assess(up, {"eval/loss": 8.8})
    assert status == DIVERGED and reason.startswith(
        "final validation loss 8.8000 ends above the training loss it started from (6.2000 at step 1)"
    )
    # A branch starts late in its origin's curve: it is judged against the origin's start.
    origin = write_metrics(tmp_path / "origin", {1: 6.2, 2: 5.0}, {})
    branch = write_metrics(tmp_path / "branch", {3: 3.5, 4: 3.9}, {4: 4.0})
    assert assess(branch, {"eval/loss": 4.0})[0] == DIVERGED
    assert assess(branch, {"eval/loss": 4.0}, origin) == (OK, "")

    record = {
        "name": "up",
        "N": 1e4,
        "N_total": 2e4,
        "D": 1e6,
        "C": 1e11,
        "loss": 8.8,
        "status": status,
        "reason": reason,
    }
    trial = as_trial(record)
    assert not trial.ok and trial.reason == reason
    assert len(Points.from_trials([trial, as_trial({**record, "name": "fine", "status": OK, "loss": 4.0})])) == 1
