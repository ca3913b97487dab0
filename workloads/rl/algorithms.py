"""PPO and GRPO as the learner sees them: a critic or none, advantages, and the loss of a micro-batch.

Both update the policy with the clipped surrogate against the log-probabilities of the weights
that generated the batch. PPO (Ziegler et al. 2019 for language) puts the KL to the reference
into the per-token reward (-coef x k1) and learns a critic for GAE; its loss is a token mean.
GRPO (Shao et al. 2024) has no critic: a response's advantage is its score normalised within its
prompt's group, and the KL is a loss term (coef x k3); its loss is a mean over responses of
each response's token mean, as in DeepSeekMath's objective.
"""

from __future__ import annotations

import dataclasses

import torch

from workloads.checkpoints.initialization import initial_model
from workloads.checkpoints.loading import load_checkpoint
from workloads.model import GPT, ModelConfig
from workloads.rl.config import GRPOConfig, PPOConfig
from workloads.rl.models import ValueModel
from workloads.rl.objectives import (
    clipped_surrogate,
    clipped_value_loss,
    gae,
    group_advantages,
    k3,
    masked_mean,
    ppo_token_rewards,
    whiten,
)


class PPO:
    name = "ppo"
    group_size = 1

    def __init__(self, cfg: PPOConfig, clip_ratio: float, reward_model: str):
        self.cfg = cfg
        self.clip_ratio = clip_ratio
        self.reward_model = reward_model

    def build_critic(self, policy_config: ModelConfig, seed: int) -> ValueModel:
        """A value head on the starting policy's backbone, or the reward model's backbone and head."""
        if self.cfg.critic_init == "reward":
            reward = load_checkpoint(self.reward_model)
            critic = ValueModel(GPT(dataclasses.replace(reward.config, init_from="")))
            critic.load_state_dict(reward.model.state_dict())
            return critic.train()
        backbone = initial_model(policy_config, seed)
        torch.manual_seed(seed)  # the head's init: the same on every rank
        return ValueModel(backbone)

    def advantages(
        self, scored: dict[str, torch.Tensor], scores: torch.Tensor, rows: list[int], mask: torch.Tensor, kl_coef: float
    ) -> dict[str, torch.Tensor]:
        """Per-token advantages (whitened over the whole batch) and returns of this rank's rows."""
        rewards = ppo_token_rewards(scores[rows].to(mask.device), scored["old_logp"], scored["ref_logp"], mask, kl_coef)
        advantages, returns = gae(rewards, scored["values"], mask, self.cfg.gamma, self.cfg.lam)
        return {"advantages": whiten(advantages, mask), "returns": returns}

    def loss(
        self,
        logp: torch.Tensor,
        values: torch.Tensor | None,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor,
        kl_coef: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        surrogate, clipped = clipped_surrogate(logp, batch["old_logp"], batch["advantages"], self.clip_ratio)
        policy_loss = masked_mean(surrogate, mask)
        value_loss = masked_mean(
            clipped_value_loss(values, batch["values"], batch["returns"], self.cfg.value_clip), mask
        )
        stats = {
            "rl/policy_loss": policy_loss.item(),
            "rl/value_loss": value_loss.item(),
            "rl/clip_fraction": masked_mean(clipped, mask).item(),
        }
        return policy_loss + self.cfg.value_coef * value_loss, stats


class GRPO:
    name = "grpo"

    def __init__(self, cfg: GRPOConfig, clip_ratio: float):
        self.group_size = cfg.group_size
        self.clip_ratio = clip_ratio

    def build_critic(self, policy_config: ModelConfig, seed: int) -> None:
        return None

    def advantages(
        self, scored: dict[str, torch.Tensor], scores: torch.Tensor, rows: list[int], mask: torch.Tensor, kl_coef: float
    ) -> dict[str, torch.Tensor]:
        """Each response's group-normalised score on each of its tokens (groups span ranks: all scores are used)."""
        per_response = group_advantages(scores, self.group_size)[rows].to(mask.device)  # (rows,)
        return {"advantages": per_response[:, None] * mask}

    def loss(
        self,
        logp: torch.Tensor,
        values: torch.Tensor | None,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor,
        kl_coef: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        surrogate, clipped = clipped_surrogate(logp, batch["old_logp"], batch["advantages"], self.clip_ratio)
        kl = k3(logp, batch["ref_logp"])
        per_token = (surrogate + kl_coef * kl) * mask
        loss = (per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()  # token mean per response, then mean
        stats = {
            "rl/policy_loss": masked_mean(surrogate, mask).item(),
            "rl/kl_loss": masked_mean(kl, mask).item(),
            "rl/clip_fraction": masked_mean(clipped, mask).item(),
        }
        return loss, stats


def make_algorithm(name: str, options: dict) -> PPO | GRPO:
    clip_ratio = options["rl"]["clip_ratio"]
    if name == "ppo":
        return PPO(PPOConfig(**options["ppo"]), clip_ratio, options["reward"]["model"])
    return GRPO(GRPOConfig(**options["grpo"]), clip_ratio)
