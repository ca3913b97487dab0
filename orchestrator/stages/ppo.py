"""The PPO stage: clipped surrogate, a critic and GAE, a KL penalty in the reward (`ppo.` is its section)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.stages.rl import RLDriver, RLStageConfig
from workloads.errors import UserInputError
from workloads.rl.config import PPOConfig


@dataclass
class PPOStageConfig(RLStageConfig):
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)

    algorithm = "ppo"

    def check(self) -> None:
        super().check()
        if self.ppo.critic_init == "reward" and not self.reward.model:
            raise UserInputError("ppo.critic_init=reward: needs reward.model (the critic starts from its weights)")


class PPODriver(RLDriver):
    name = "ppo"
    summary = (
        "PPO from an SFT checkpoint: clipped surrogate, a critic and GAE, a KL penalty in the reward; rollout "
        "actors, a reward model or function, and a DeepSpeed learner on Ray Train."
    )
    tree = PPOStageConfig

    def chain_overrides(
        self, finished: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The chain's reward model scores PPO's rollouts, unless its overrides name a reward."""
        if "reward" in finished and not {"reward.model", "reward.function"} & set(overrides):
            return {"reward.model": finished["reward"]["checkpoint"]}
        return {}


PPO = PPODriver()
