"""The reward scorer's trial call: what it answers the driver before any rollout."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import BAD_REWARDS
from workloads.rl.reward import RewardScorer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "function, problem",
    [
        ("one_short", "returned 1 values for 2 responses"),
        ("nan_always", "returned a non-finite value (nan) for response 0"),
        ("raises", "raised ZeroDivisionError: division by zero"),
    ],
)
def test_a_reward_function_that_fails_its_trial_call_is_refused(tmp_path, monkeypatch, function, problem):
    """What the reward actor answers the driver before any rollout (the driver raises it as one line)."""
    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bad_rewards", raising=False)
    scorer = RewardScorer({"function": f"bad_rewards:{function}"})
    assert scorer.problem() == f"reward.function=bad_rewards:{function}: a trial call on 2 responses {problem}"
    assert RewardScorer({"function": "workloads.task:property_reward"}).problem() == ""
