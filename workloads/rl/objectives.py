"""The arithmetic of PPO and GRPO on per-token tensors (B, T) with a mask of the response tokens.

Position t holds what the policy did at step t: the log-probability of token t+1 given the
prefix up to t, and (PPO) the critic's value of that prefix. `mask` is True where token t+1
is a response token (the closing end-of-document token included: stopping is an action too).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def global_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of x over the masked entries of every rank (one all-reduce)."""
    sums = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum().to(x.dtype)]).double()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    count = sums[2].clamp(min=1)
    mean = sums[0] / count
    return mean.to(x.dtype), (sums[1] / count - mean * mean).clamp(min=0).to(x.dtype)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries of the whole batch (all ranks); 0 elsewhere."""
    mean, var = global_moments(x, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def last_action(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last response position (B,); responses are contiguous runs of the mask."""
    return mask.long().cumsum(dim=1).argmax(dim=1)  # the running count first reaches its maximum there


def ppo_token_rewards(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Ziegler et al.'s per-token reward (B, T): -kl_coef x k1 at every response token, plus the
    sequence's score at its last token."""
    rewards = -kl_coef * k1(logp, ref_logp) * mask
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_action(mask)] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's response positions.

    The value after the last response token is 0 (the episode ends). Returns (advantages,
    returns = advantages + values), both (B, T) and 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    # Whether step t has a next step in the response, and that step's value (B, T).
    next_mask = torch.cat((mask[:, 1:], torch.zeros_like(mask[:, :1])), dim=1)
    next_values = torch.cat((values[:, 1:], torch.zeros_like(values[:, :1])), dim=1) * next_mask
    deltas = rewards + gamma * next_values - values  # (B, T): one-step TD errors
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[1])):
        running = (deltas[:, t] + gamma * lam * running * next_mask[:, t]) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantage of each response (N,): (score - its group's mean) / (its group's std + eps).

    Responses to one prompt are consecutive, `group_size` of them. A group whose responses all
    score the same teaches nothing: its advantages are 0.
    """
    groups = scores.view(-1, group_size)  # (prompts, G)
    normalised = (groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + eps)
    return normalised.reshape(-1)


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token loss -min(ratio x A, clip(ratio) x A) (B, T), and where the clip was active (B, T)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return -torch.min(unclipped, clipped), (clipped < unclipped).float()


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """The critic's per-token loss 0.5 x max((V - R)^2, (V_clipped - R)^2) (B, T); unclipped when clip is 0."""
    loss = (values - returns) ** 2
    if clip > 0:
        held = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.max(loss, (held - returns) ** 2)
    return 0.5 * loss


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log pi/pi_ref of the sampled token: unbiased for KL(pi || pi_ref), but noisy and of either sign."""
    return logp - ref_logp


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """pi_ref/pi - log(pi_ref/pi) - 1 of the sampled token: unbiased for KL(pi || pi_ref) and never
    negative (Schulman's estimator; GRPO's KL term)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


class KLController:
    """The KL coefficient: fixed, or adapted toward a target KL (Ziegler et al. 2019, section 2.2).

    After each batch: error = clip(KL / target - 1, -0.2, 0.2), coef *= 1 + error x sequences / horizon.
    """

    def __init__(self, coef: float, adaptive: bool, target: float, horizon: int):
        self.coef = coef
        self.adaptive = adaptive
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, sequences: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * sequences / self.horizon
