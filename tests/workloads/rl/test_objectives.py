"""The RL arithmetic against direct formulas: GAE, group advantages, the k3 estimator, the KL controller, whitening."""

from __future__ import annotations

import pytest
import torch

from workloads.rl.objectives import KLController, gae, group_advantages, k3, whiten

pytestmark = pytest.mark.slow


def test_gae_equals_the_discounted_sum_of_td_errors_over_the_response():
    torch.manual_seed(0)
    rewards, values = torch.randn(2, 7), torch.randn(2, 7)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 2:6], mask[1, 1:7] = True, True  # responses of 4 and 6 steps
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row in range(2):
        steps = mask[row].nonzero().flatten().tolist()
        for k, t in enumerate(steps):
            expected = 0.0
            for j, u in enumerate(steps[k:]):
                following = values[row, u + 1] if u + 1 in steps else 0.0
                expected += (gamma * lam) ** j * (rewards[row, u] + gamma * following - values[row, u])
            assert advantages[row, t].item() == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
            assert returns[row, t].item() == pytest.approx(float(expected + values[row, t]), rel=1e-5, abs=1e-6)
    assert not advantages[~mask].any() and not returns[~mask].any()


def test_group_advantages_kl_estimator_kl_controller_and_whitening():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    advantages = group_advantages(scores, group_size=4)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()  # the unbiased std of the first group
    assert advantages[:4].tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], rel=1e-5)
    assert advantages[4:].tolist() == [0.0] * 4  # a group that all scores the same teaches nothing
    logp, ref = torch.log(torch.tensor([0.2, 0.5, 0.9])), torch.log(torch.tensor([0.4, 0.5, 0.1]))
    assert (k3(logp, ref) >= 0).all() and k3(logp, ref)[1] == 0
    controller = KLController(0.1, adaptive=True, target=0.2, horizon=1000)
    controller.update(kl=0.5, sequences=100)  # far above target: the correction is capped at +20%
    assert controller.coef == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    controller.update(kl=0.18, sequences=100)  # 10% below: -10% x 100/1000
    assert controller.coef == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))
    x, mask = torch.randn(3, 5), torch.rand(3, 5) > 0.3
    white = whiten(x, mask)
    assert white[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert white[mask].var(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
