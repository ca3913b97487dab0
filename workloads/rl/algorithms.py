"""PPO and GRPO as the learner sees them: a critic or none, advantages, and the loss of a micro-batch.

Both update the policy with the clipped surrogate against the log-probabilities of the weights
that generated the batch. PPO (Ziegler et al. 2019 for language) puts the KL to the reference
into the per-token reward (-coef x k1) and learns a critic for GAE; its loss is a token mean.
GRPO (Shao et al. 2024) has no critic: a response's advantage is its score normalised within its
prompt's group, and the KL is a loss term (coef x k3); its loss is a mean over responses of
each response's token mean, as in DeepSeekMath's objective.

Two registries, as veRL's `core_algos.py` keeps them: algorithms by name (`register_algorithm`;
the name is the stage's and its config section's) and advantage estimators (`register_advantage`),
which an algorithm names instead of computing its advantages inline. A new algorithm is a class
here and a stage driver in `orchestrator/stages/`; a new estimator one registered function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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

ALGORITHMS: dict[str, type] = {}
# name -> fn(algorithm, scored, scores, rows, mask, kl_coef) -> {"advantages": (rows, T), ...}
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {}


def register_algorithm(name: str):
    def register(cls: type) -> type:
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return register


def register_advantage(name: str):
    def register(fn: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., dict[str, torch.Tensor]]:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return register


@register_advantage("gae")
def gae_advantages(
    algorithm,
    scored: dict[str, torch.Tensor],
    scores: torch.Tensor,
    rows: list[int],
    mask: torch.Tensor,
    kl_coef: float,
) -> dict[str, torch.Tensor]:
    """Per-token advantages (whitened over the whole batch) and returns of this rank's rows: the score at the
    last token, the KL penalty on every token, GAE over the critic's values."""
    rewards = ppo_token_rewards(scores[rows].to(mask.device), scored["old_logp"], scored["ref_logp"], mask, kl_coef)
    advantages, returns = gae(rewards, scored["values"], mask, algorithm.cfg.gamma, algorithm.cfg.lam)
    return {"advantages": whiten(advantages, mask), "returns": returns}


@register_advantage("group")
def group_normalised_advantages(
    algorithm,
    scored: dict[str, torch.Tensor],
    scores: torch.Tensor,
    rows: list[int],
    mask: torch.Tensor,
    kl_coef: float,
) -> dict[str, torch.Tensor]:
    """Each response's group-normalised score on each of its tokens (groups span ranks: all scores are used)."""
    per_response = group_advantages(scores, algorithm.group_size)[rows].to(mask.device)  # (rows,)
    return {"advantages": per_response[:, None] * mask}


class Algorithm:
    """What the learner asks of an algorithm: its critic, its advantages (by a registered estimator), its loss."""

    name = ""
    group_size = 1  # responses per prompt
    advantage_estimator = ""  # a key of ADVANTAGE_ESTIMATORS

    def build_critic(self, policy_config: ModelConfig, seed: int) -> ValueModel | None:
        """The critic trained beside the policy; None: the algorithm has none."""
        return None

    def advantages(
        self, scored: dict[str, torch.Tensor], scores: torch.Tensor, rows: list[int], mask: torch.Tensor, kl_coef: float
    ) -> dict[str, torch.Tensor]:
        """This rank's `rows` of the batch: advantages (and, with a critic, returns) per token."""
        return ADVANTAGE_ESTIMATORS[self.advantage_estimator](self, scored, scores, rows, mask, kl_coef)

    def loss(
        self,
        logp: torch.Tensor,
        values: torch.Tensor | None,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor,
        kl_coef: float,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """A micro-batch's loss and its statistics."""
        raise NotImplementedError


@register_algorithm("ppo")
class PPO(Algorithm):
    advantage_estimator = "gae"

    def __init__(self, options: dict):
        self.cfg = PPOConfig(**options["ppo"])
        self.clip_ratio = options["rl"]["clip_ratio"]
        self.reward_model = options["reward"]["model"]

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


@register_algorithm("grpo")
class GRPO(Algorithm):
    advantage_estimator = "group"

    def __init__(self, options: dict):
        self.group_size = GRPOConfig(**options["grpo"]).group_size
        self.clip_ratio = options["rl"]["clip_ratio"]

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


def make_algorithm(name: str, options: dict) -> Algorithm:
    """The registered algorithm `name`, built from the learner's options (its section and rl, reward)."""
    return ALGORITHMS[name](options)
