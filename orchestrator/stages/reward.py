"""The reward-model stage: the backbone plus a scalar head, Bradley-Terry loss on ranked pairs, from SFT."""

from __future__ import annotations

from orchestrator.stages.finetuning import FinetuneDriver


class RewardDriver(FinetuneDriver):
    name = "reward"
    summary = "Train a reward model (backbone + scalar head) on ranked responses with the Bradley-Terry loss."
    starts_from = "sft"  # InstructGPT: the reward model starts from the SFT model


REWARD = RewardDriver()
