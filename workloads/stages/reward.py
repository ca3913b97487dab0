"""The reward model: a GPT backbone (the SFT model by default) with a scalar head on the last token,
trained on ranked responses with the Bradley-Terry loss."""

from __future__ import annotations

import torch

from workloads.checkpoints.initialization import initial_model
from workloads.checkpoints.loading import SCALAR_HEAD, describe_checkpoint
from workloads.model import ScalarHeadModel
from workloads.stages.preference import PreferenceStage


class RewardStage(PreferenceStage):
    name = "reward"

    def build_model(self):
        backbone = initial_model(self.plan.model, self.plan.train.seed)
        torch.manual_seed(self.plan.train.seed)  # the head's init: the same on every rank
        return ScalarHeadModel(backbone)

    def pair_rewards(self, engine, split, indices):
        batch = self.batch(split, indices)
        # Chosen and rejected in one forward: (2B, T) sequences, a reward read at each one's last token.
        rewards = engine(
            torch.cat((batch["chosen"], batch["rejected"])), torch.cat((batch["chosen_last"], batch["rejected_last"]))
        )  # (2B,)
        return rewards.chunk(2)

    def describe(self):
        return describe_checkpoint(
            self.plan.model, self.tokenizer, self.plan.dataset_dir, self.plan.train, stage="reward", kind=SCALAR_HEAD
        )
