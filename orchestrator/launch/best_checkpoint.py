"""Keep the best checkpoint by validation loss beside Ray's newest-K retention.

Ray Train keeps the newest `train.keep_checkpoints` checkpoints (deleting older ones
only after a newer one is registered) and refuses to resume when a checkpoint its
run snapshot lists has vanished, so the best one cannot simply be spared from its
deletion. Instead, whenever a registered checkpoint carries the lowest validation
loss so far, it is hard-linked (no data copied on one filesystem) into
`<run>/best/<tag>/` and the `<run>/best_checkpoint` symlink is switched to it in one
atomic rename; the previous best is removed only after the switch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

BEST_ROOT = "best"
BEST_LINK = "best_checkpoint"
RECORD_FILE = "best.json"


def read_best(run_dir: Path) -> dict[str, Any] | None:
    """{"step", "eval_loss", "source"} of the current best checkpoint, or None."""
    record = run_dir / BEST_LINK / RECORD_FILE
    return json.loads(record.read_text()) if record.exists() else None


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def promote(run_dir: Path, checkpoint_dir: Path, step: int, eval_loss: float) -> Path:
    """Make `checkpoint_dir` the run's best checkpoint; returns its new home."""
    root = run_dir / BEST_ROOT
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step{step:08d}"
    staging = root / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint_dir, staging, copy_function=_link_or_copy)
    record = {"step": step, "eval_loss": eval_loss, "source": str(checkpoint_dir)}
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)

    link = run_dir / BEST_LINK
    previous = link.resolve() if link.is_symlink() else None
    pending = run_dir / f".{BEST_LINK}.new"
    pending.unlink(missing_ok=True)
    pending.symlink_to(Path(BEST_ROOT) / target.name)  # relative: the run directory may move
    os.replace(pending, link)
    if previous is not None and previous != target.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    return target


def forget(run_dir: Path) -> None:
    """Remove the best checkpoint (a run started over)."""
    (run_dir / BEST_LINK).unlink(missing_ok=True)
    shutil.rmtree(run_dir / BEST_ROOT, ignore_errors=True)
