"""The best checkpoint by validation loss survives Ray's newest-K retention."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ray.train import Checkpoint

from orchestrator.launch import best_checkpoint, run_state
from orchestrator.launch.callbacks import BestCheckpointKeeper

KEEP_NEWEST = 2


def write_checkpoint(storage: Path, step: int) -> Path:
    """A checkpoint directory laid out like the worker's: DeepSpeed files under the tag, plus the marker."""
    directory = storage / f"checkpoint_{step:04d}"
    (directory / f"step{step:08d}").mkdir(parents=True)
    (directory / f"step{step:08d}" / "mp_rank_00_model_states.pt").write_bytes(bytes([step]) * 4096)
    (directory / "training_state.json").write_text(json.dumps({"step": step}))
    return directory


def report(keeper: BestCheckpointKeeper, directory: Path, step: int, eval_loss: float, eval_step: int | None = None):
    metrics = {
        "step": step,
        "train/loss": 9.0,
        "eval/loss": eval_loss,
        "eval_step": step if eval_step is None else eval_step,
    }
    keeper.after_report(None, [metrics, dict(metrics)], Checkpoint.from_directory(str(directory)))


def retain_newest(storage: Path) -> None:
    """What Ray's CheckpointConfig(num_to_keep=2) does after each registration."""
    for old in sorted(storage.glob("checkpoint_*"))[:-KEEP_NEWEST]:
        shutil.rmtree(old)


def test_best_checkpoint_outlives_the_newest_k(tmp_path):
    run_dir, storage = tmp_path / "run", tmp_path / "run" / "train"
    keeper = BestCheckpointKeeper(run_dir, "pretrain")
    for step, loss in [(4, 3.0), (8, 2.5), (12, 2.7), (16, 2.9), (20, 2.6)]:
        report(keeper, write_checkpoint(storage, step), step, loss)
        retain_newest(storage)

    assert [p.name for p in sorted(storage.glob("checkpoint_*"))] == ["checkpoint_0016", "checkpoint_0020"]
    best = best_checkpoint.read_best(run_dir)
    assert (best["step"], best["eval_loss"]) == (8, 2.5)
    kept = run_dir / best_checkpoint.BEST_LINK
    assert (kept / "step00000008" / "mp_rank_00_model_states.pt").read_bytes() == bytes([8]) * 4096
    assert json.loads((kept / "training_state.json").read_text())["step"] == 8
    assert [p.name for p in (run_dir / best_checkpoint.BEST_ROOT).iterdir()] == [
        "step00000008"
    ]  # earlier bests removed


def test_only_a_loss_measured_on_the_checkpointed_weights_counts(tmp_path):
    run_dir, storage = tmp_path / "run", tmp_path / "run" / "train"
    keeper = BestCheckpointKeeper(run_dir, "pretrain")
    report(keeper, write_checkpoint(storage, 10), 10, 3.0)
    report(keeper, write_checkpoint(storage, 15), 15, 1.0, eval_step=10)  # a stale evaluation from step 10
    report(keeper, write_checkpoint(storage, 20), 20, float("nan"))
    best = best_checkpoint.read_best(run_dir)
    assert (best["step"], best["eval_loss"]) == (10, 3.0)


def test_a_fresh_start_forgets_the_best_checkpoint(tmp_path):
    run_dir, storage = tmp_path / "run", tmp_path / "run" / "train"
    report(BestCheckpointKeeper(run_dir, "pretrain"), write_checkpoint(storage, 10), 10, 3.0)
    run_state.save(run_dir, run_state.RunState("old-identity", 8))
    assert run_state.claim(run_dir, "new-identity", 8, fresh=True) is None
    assert best_checkpoint.read_best(run_dir) is None
    assert not (run_dir / best_checkpoint.BEST_ROOT).exists() and not storage.exists()
