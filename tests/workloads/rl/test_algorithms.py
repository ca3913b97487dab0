"""The RL registries: each algorithm by name, each naming a registered advantage estimator that computes its
advantages."""

from __future__ import annotations

import torch

from workloads.rl.algorithms import ADVANTAGE_ESTIMATORS, ALGORITHMS, make_algorithm
from workloads.rl.config import GRPOConfig, PPOConfig, RewardConfig, RolloutConfig
from workloads.rl.objectives import group_advantages

OPTIONS = {
    "rl": {"clip_ratio": RolloutConfig().clip_ratio},
    "reward": {"model": RewardConfig().model},
    "ppo": PPOConfig().__dict__,
    "grpo": {**GRPOConfig().__dict__, "group_size": 4},
}


def test_the_algorithms_and_their_estimators_are_registered():
    assert sorted(ALGORITHMS) == ["grpo", "ppo"]
    for name in ALGORITHMS:
        algorithm = make_algorithm(name, OPTIONS)
        assert algorithm.name == name and algorithm.advantage_estimator in ADVANTAGE_ESTIMATORS
    assert make_algorithm("grpo", OPTIONS).group_size == 4 and make_algorithm("ppo", OPTIONS).group_size == 1


def test_grpo_advantages_come_from_its_estimator():
    torch.manual_seed(0)
    scores, mask = torch.randn(8), torch.ones(8, 5, dtype=torch.bool)
    mask[:, :2] = False
    rows = [1, 3, 5, 7]
    got = make_algorithm("grpo", OPTIONS).advantages({}, scores, rows, mask[rows], kl_coef=0.1)["advantages"]
    expected = group_advantages(scores, 4)[rows][:, None] * mask[rows]
    torch.testing.assert_close(got, expected)
