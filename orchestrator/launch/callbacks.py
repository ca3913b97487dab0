"""Ray Train callbacks of the pretrain driver (they run in Ray Train's controller)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.train import Checkpoint, UserCallback

from orchestrator.launch.best_checkpoint import promote, read_best
from workloads.checkpoints.saving import EVAL_STEP_KEY


class BestCheckpointKeeper(UserCallback):
    """Promotes each checkpoint with a new lowest validation loss; called once Ray has registered it."""

    def __init__(self, run_dir: Path, stage: str):
        self.run_dir = Path(run_dir)
        self.stage = stage

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        reported = metrics[0]  # rank 0's metrics: the evaluation is a mean over all ranks already
        if checkpoint is None or "eval/loss" not in reported or reported.get(EVAL_STEP_KEY) != reported.get("step"):
            return  # only a validation loss measured on these very weights ranks a checkpoint
        loss = float(reported["eval/loss"])
        best = read_best(self.run_dir)
        if math.isnan(loss) or (best is not None and best["eval_loss"] <= loss):
            return
        try:
            target = promote(self.run_dir, Path(checkpoint.path), int(reported["step"]), loss)
        except OSError as e:  # keeping a spare copy must never stop training
            print(f"{self.stage}: warning: could not keep the best checkpoint ({e}); training goes on", flush=True)
            return
        print(f"{self.stage}: best checkpoint so far (validation loss {loss:.4f}) kept as {target}", flush=True)
