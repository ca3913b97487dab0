"""A branch: a new pretrain run from another run's checkpoint, with its own learning-rate schedule.

WSD sweeps rest on it: a warmup-stable run checkpointed where a shorter run's cooldown
starts, and a branch from there that cools down, must train exactly what an independent
WSD run of the shorter length trains (same weights, optimizer state and data position at
the branch point; the branch's own schedule from there on).
"""

from __future__ import annotations

import pytest

from orchestrator.scaling_laws.tune_runner import registered_checkpoint
from tests.helpers import run_tiny, step_metrics
from workloads.errors import UserInputError

pytestmark = pytest.mark.slow

# The tiny recipe (20 steps, warmup 2) on a WSD schedule. 12 steps with a third cooling down
# start to decay after step 8; 20 steps hold the peak rate until step 13.
WSD = (
    "--train.schedule=wsd",
    "--train.decay_fraction=0.34",
    "--train.checkpoint_interval=0",
    "--train.eval_interval=4",
)
BRANCH_STEP, SHORT = 8, 12


def test_a_branch_trains_what_an_independent_run_of_its_length_trains(tiny_dataset, tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_tiny(tiny_dataset, tmp_path, uri, "--run.name=long", *WSD, f"--run.checkpoint_steps=[{BRANCH_STEP}]")
    origin = registered_checkpoint(tmp_path / "long", BRANCH_STEP)
    assert origin is not None
    branch = run_tiny(
        tiny_dataset,
        tmp_path,
        uri,
        "--run.name=branch",
        *WSD,
        f"--train.max_steps={SHORT}",
        f"--run.branch_from={origin}",
    )
    alone = run_tiny(tiny_dataset, tmp_path, uri, "--run.name=alone", *WSD, f"--train.max_steps={SHORT}")

    long, branched, independent = (step_metrics(tmp_path / name) for name in ("long", "branch", "alone"))
    assert sorted(branched) == list(range(BRANCH_STEP + 1, SHORT + 1))  # it starts at the checkpoint's step
    for step in range(1, BRANCH_STEP + 1):
        assert long[step] == independent[step], f"step {step}"  # the same run up to the branch point
    for step in range(BRANCH_STEP + 1, SHORT + 1):
        assert branched[step] == pytest.approx(independent[step], rel=1e-6, abs=0), f"step {step}"
    # Its own schedule: cooling down where the independent run does, not holding the long run's peak.
    assert step_metrics(tmp_path / "branch", "train/lr")[SHORT] == pytest.approx(
        step_metrics(tmp_path / "alone", "train/lr")[SHORT], rel=1e-12
    )
    assert branch["step"] == SHORT and branch["eval/loss"] == pytest.approx(alone["eval/loss"], rel=1e-6)


def test_a_branch_of_another_model_is_refused(tiny_checkpoint, tiny_dataset, tmp_path, shared_ray):
    with pytest.raises(UserInputError) as caught:
        run_tiny(
            tiny_dataset,
            tmp_path,
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--model.d_model=32",
            f"--run.branch_from={tiny_checkpoint}",
        )
    assert str(caught.value).startswith(f"run.branch_from: {tiny_checkpoint} holds a model of another shape")
    assert not (tmp_path / "tiny" / "run.json").exists()  # refused before anything was written
