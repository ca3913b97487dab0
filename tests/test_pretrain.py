"""Real pretrain jobs on a local Ray: halt and resume continues the same curve.

Training under every layout (1 and 2 workers x ZeRO 0-3, pipeline stages) and the
loss parity between layouts are in test_layout_parity.py, which trains each layout once.
"""
from __future__ import annotations

import json

import pytest

from pretrain_helpers import run_tiny, step_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_resume_continues_the_same_loss_curve(tiny_dataset, tmp_path, tracking_uri, ray_local):
    run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=straight", "--train.checkpoint_interval=4",
             "--train.keep_checkpoints=2")
    kept = sorted(p for p in (tmp_path / "straight" / "train").glob("checkpoint_*") if p.is_dir())
    assert [json.loads((c / "training_state.json").read_text())["step"] for c in kept] == [16, 20]
    halted = run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=resumed", "--train.halt_at_step=7")
    assert halted["step"] == 7
    final = run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=resumed")
    assert final["step"] == 20
    straight, resumed = step_metrics(tmp_path / "straight"), step_metrics(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 21))
    for step in range(8, 21):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=0), f"step {step}"
