"""Real pretrain jobs on a local Ray: checkpoints kept, the best one marked, halt and resume continues the same curve.

The uninterrupted run is conftest's tiny_run (checkpoints and evaluations every 4 steps, 2 kept); the
halted and resubmitted one is conftest's tracked_run (halted at step 7, tracked by a real MLflow
server, whose record test_tracking reads). Training under every layout (1 and 2 workers x ZeRO 0-3,
pipeline stages) and the loss parity between layouts are in test_layout_parity.py.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import step_metrics

pytestmark = pytest.mark.slow


def test_only_the_latest_checkpoints_are_kept_and_the_best_is_marked(tiny_run):
    run_dir = tiny_run["run_dir"]
    kept = sorted(p for p in (run_dir / "train").glob("checkpoint_*") if p.is_dir())
    assert [json.loads((c / "training_state.json").read_text())["step"] for c in kept] == [16, 20]
    evaluated = step_metrics(run_dir, "eval/loss")
    assert sorted(evaluated) == [4, 8, 12, 16, 20]
    best_step = min(evaluated, key=evaluated.get)
    best = run_dir / "best_checkpoint"
    assert json.loads((best / "best.json").read_text())["eval_loss"] == evaluated[best_step]
    assert json.loads((best / "training_state.json").read_text())["step"] == best_step
    assert (best / f"step{best_step:08d}" / "mp_rank_00_model_states.pt").exists()


def test_resume_continues_the_same_loss_curve(tracked_run, tiny_run):
    assert tracked_run["halted"]["step"] == 7
    assert tracked_run["final"]["step"] == 20
    straight, resumed = step_metrics(tiny_run["run_dir"]), step_metrics(tracked_run["run_dir"])
    assert sorted(resumed) == list(range(1, 21))
    for step in range(8, 21):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=0), f"step {step}"
