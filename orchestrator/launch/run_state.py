"""The run directory's own record: which training identity and MLflow run it belongs to.

`<run.output_dir>/<run.name>/run.json` is written before training starts. A
resubmission with the same name resumes only if its training identity (a hash of
what determines the loss curve) matches; otherwise it is refused unless
`run.fresh` is set, so one run's checkpoints are never resumed into another.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.launch import best_checkpoint
from orchestrator.launch.tracking import FORWARDED_OFFSET_FILE
from workloads.errors import UserInputError
from workloads.metrics_log import METRICS_FILE
from workloads.sample_ledger import LEDGER_DIR

STATE_FILE = "run.json"
TRAIN_STORAGE = "train"  # Ray Train's storage (checkpoints) inside the run directory


@dataclass
class RunState:
    identity: str
    global_batch: int
    mlflow_run_id: str = ""
    tracking_uri: str = ""


def load(run_dir: Path) -> RunState | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    return RunState(**json.loads(path.read_text()))


def save(run_dir: Path, state: RunState) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(run_dir / STATE_FILE)


def claim(
    run_dir: Path, identity: str, global_batch: int, fresh: bool, allow_batch_change: bool = False
) -> RunState | None:
    """Check the run directory may hold this run; returns the previous state when resuming."""
    previous = load(run_dir)
    if fresh and run_dir.exists():
        for directory in (TRAIN_STORAGE, LEDGER_DIR):
            shutil.rmtree(run_dir / directory, ignore_errors=True)
        best_checkpoint.forget(run_dir)
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        for record in (METRICS_FILE, FORWARDED_OFFSET_FILE):
            (run_dir / record).unlink(missing_ok=True)
        return None
    if previous is None:
        if (run_dir / TRAIN_STORAGE).exists():
            raise UserInputError(
                f"{run_dir}: holds checkpoints but no {STATE_FILE}; pass --run.fresh=true to start over"
            )
        return None
    if previous.identity != identity:
        raise UserInputError(
            f"{run_dir}: holds checkpoints of a different config (identity {previous.identity}, now {identity}); "
            "use another run.name or --run.fresh=true to start over"
        )
    if previous.global_batch != global_batch and not allow_batch_change:
        raise UserInputError(
            f"{run_dir}: was trained with global batch {previous.global_batch}, now {global_batch}; "
            "set train.global_batch_size to keep it, --run.allow_global_batch_change=true to continue with the new "
            "one from the samples consumed so far, or --run.fresh=true"
        )
    return previous
