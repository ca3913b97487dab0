"""The GRPO stage: several responses per prompt, group-normalised rewards, no critic (`grpo.` is its section)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from orchestrator.stages.rl import RLDriver, RLStageConfig
from workloads.rl.config import GRPOConfig


@dataclass
class GRPOStageConfig(RLStageConfig):
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)

    algorithm = "grpo"

    @property
    def group_size(self) -> int:
        return self.grpo.group_size


class GRPODriver(RLDriver):
    name = "grpo"
    summary = (
        "GRPO from an SFT checkpoint: several responses per prompt, group-normalised rewards as advantages, no "
        "critic, KL to the reference in the loss; rollout actors and a DeepSpeed learner on Ray Train."
    )
    tree = GRPOStageConfig


GRPO = GRPODriver()
