"""One iteration's rollouts: what travels from rank 0 to every rank, and its tensors.

A sequence is `prompt ids (opening with end-of-document) + response + [eos if it stopped]`,
right-padded into a batch: every row starts at position 0, so positions match the generator's
(which left-pads but gives padding no position). Inputs are tokens 0..T-2, targets 1..T-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workloads.model import token_logprobs
from workloads.stages.datasets import IGNORED_TARGET


@dataclass
class Rollouts:
    """Per sequence; the G responses to one prompt are consecutive."""

    prompt_index: list[int]  # into the prompt set
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # generated tokens, without the closing end-of-document token
    stopped: list[bool]  # True where the response ended with end-of-document
    scores: list[float] | None = None  # one reward per sequence, once scored

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def response_lengths(self) -> list[int]:
        """Response tokens the policy chose, the closing end-of-document token included."""
        return [len(r) + int(s) for r, s in zip(self.response_ids, self.stopped)]

    def tensors(self, rows: list[int], eos_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inputs (B, T-1), targets (B, T-1) and the response mask (B, T-1) of the sequences at `rows`."""
        sequences = [self.prompt_ids[i] + self.response_ids[i] + ([eos_id] if self.stopped[i] else []) for i in rows]
        width = max(map(len, sequences))
        ids = torch.full((len(rows), width), eos_id, dtype=torch.long)  # padding is never scored
        mask = torch.zeros(len(rows), width - 1, dtype=torch.bool)
        for row, (i, sequence) in enumerate(zip(rows, sequences)):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, len(self.prompt_ids[i]) - 1 : len(sequence) - 1] = True  # predicting the response tokens
        return ids[:, :-1].to(device), ids[:, 1:].to(device), mask.to(device)


def scaled_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(target) at the sampling temperature (B, T), and the full log-distribution (B, T, V), fp32."""
    logits = logits.float() / temperature
    return token_logprobs(logits, targets.masked_fill(~mask, IGNORED_TARGET)), torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def score_rollouts(
    engine,
    reference,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    micro_batch_size: int,
    autocast,
) -> dict[str, torch.Tensor]:
    """What the update needs from the weights that generated the batch, each (B, T):

    old_logp (the policy's log-probs: the ratio's denominator), ref_logp (the reference's), kl (exact
    KL(pi || pi_ref) of the next-token distributions), entropy (of the policy's), and values (PPO).
    """
    parts: dict[str, list[torch.Tensor]] = {"old_logp": [], "ref_logp": [], "kl": [], "entropy": [], "values": []}
    engine.eval()
    for start in range(0, len(inputs), micro_batch_size):
        chunk = slice(start, start + micro_batch_size)
        logits, values = engine(inputs[chunk])
        with autocast():
            ref_logits = reference(inputs[chunk])
        logp, log_dist = scaled_logprobs(logits, targets[chunk], mask[chunk], temperature)
        ref_logp, ref_log_dist = scaled_logprobs(ref_logits, targets[chunk], mask[chunk], temperature)
        probs = log_dist.exp()
        parts["old_logp"].append(logp)
        parts["ref_logp"].append(ref_logp)
        parts["kl"].append((probs * (log_dist - ref_log_dist)).sum(dim=-1))
        parts["entropy"].append(-(probs * log_dist).sum(dim=-1))
        if values is not None:
            parts["values"].append(values.float())
    engine.train()
    return {key: torch.cat(value) * mask if value else None for key, value in parts.items()}


@torch.no_grad()
def mean_token_kl(policy, reference, rollouts: Rollouts, eos_id: int, batch_size: int = 32) -> float:
    """Exact KL(policy || reference) of the next-token distributions, averaged over the response tokens
    of `rollouts` (sampled from `policy`): how far the policy has moved, per token, in nats."""
    total, count = 0.0, 0
    for start in range(0, len(rollouts), batch_size):
        inputs, targets, mask = rollouts.tensors(
            list(range(start, min(start + batch_size, len(rollouts)))), eos_id, "cpu"
        )
        _, log_dist = scaled_logprobs(policy(inputs), targets, mask, 1.0)
        _, ref_log_dist = scaled_logprobs(reference(inputs), targets, mask, 1.0)
        kl = (log_dist.exp() * (log_dist - ref_log_dist)).sum(dim=-1)  # (B, T)
        total += (kl * mask).sum().item()
        count += int(mask.sum())
    return total / max(count, 1)
