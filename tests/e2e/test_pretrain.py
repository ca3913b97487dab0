"""Real pretrain jobs on a local Ray: halt and resume continues the same curve.

Training under every layout (1 and 2 workers x ZeRO 0-3, pipeline stages) and the
loss parity between layouts are in test_layout_parity.py, which trains each layout once.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_tiny, step_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_resume_continues_the_same_loss_curve(tiny_dataset, tmp_path, tracking_uri, ray_local):
    run_tiny(
        tiny_dataset,
        tmp_path,
        tracking_uri,
        "--run.name=straight",
        "--train.checkpoint_interval=4",
        "--train.eval_interval=4",
        "--train.keep_checkpoints=2",
    )
    kept = sorted(p for p in (tmp_path / "straight" / "train").glob("checkpoint_*") if p.is_dir())
    assert [json.loads((c / "training_state.json").read_text())["step"] for c in kept] == [16, 20]
    evaluated = step_metrics(tmp_path / "straight", "eval/loss")
    best_step = min(evaluated, key=evaluated.get)
    best = tmp_path / "straight" / "best_checkpoint"
    assert json.loads((best / "best.json").read_text())["eval_loss"] == evaluated[best_step]
    assert json.loads((best / "training_state.json").read_text())["step"] == best_step
    assert (best / f"step{best_step:08d}" / "mp_rank_00_model_states.pt").exists()
    halted = run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=resumed", "--train.halt_at_step=7")
    assert halted["step"] == 7
    final = run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=resumed")
    assert final["step"] == 20
    straight, resumed = step_metrics(tmp_path / "straight"), step_metrics(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 21))
    for step in range(8, 21):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=0), f"step {step}"
