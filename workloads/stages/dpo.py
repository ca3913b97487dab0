"""Direct preference optimisation (Rafailov et al. 2023): a trainable policy against a frozen reference.

The implicit reward of a response is beta * (log pi(response | prompt) - log pi_ref(response | prompt)),
summed over the response tokens (and the end-of-document token that closes it); the loss
is the Bradley-Terry loss of the chosen response's implicit reward over the rejected one's.

The reference's log-probabilities are computed once, when the worker group starts and
before the engine is built: every rank scores its share of all train and validation
pairs with the starting weights, and an all-gather gives every rank the whole table.
No reference model stays in memory while training (ZeRO-3 partitions only the
policy), and the reference costs one forward pass per pair instead of one per pair
per epoch; a resumed run recomputes the same table from the same starting weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from workloads.checkpoints.initialization import initial_model
from workloads.checkpoints.loading import describe_checkpoint
from workloads.errors import UserInputError
from workloads.model import token_logprobs
from workloads.schema import option
from workloads.stages.preference import PreferenceStage


@dataclass
class DPOConfig:
    """The `dpo.` section."""

    beta: float = option(0.1, "strength of the KL anchor to the reference: implicit reward = beta x log-ratio")

    def validate(self) -> None:
        if not self.beta > 0:
            raise UserInputError(f"dpo.beta: must be > 0, got {self.beta}")


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities (B,) of the chosen and of the rejected responses, in one forward."""
    ids = torch.cat((batch["chosen"], batch["rejected"]))  # (2B, T)
    targets = torch.cat((batch["chosen_targets"], batch["rejected_targets"]))  # (2B, T), response tokens only
    return token_logprobs(model(ids), targets).sum(dim=-1).chunk(2)


class DPOStage(PreferenceStage):
    name = "dpo"

    def __init__(self, plan, device, on_gpu):
        super().__init__(plan, device, on_gpu)
        self.beta = DPOConfig(**plan.options).beta
        self.reference: dict[str, torch.Tensor] = {}  # split -> (pairs, 2) chosen and rejected log-probs

    def build_model(self):
        return initial_model(self.plan.model, self.plan.train.seed)

    def build_engine(self, world, overrides):
        reference = self.build_model().to(self.device).eval()
        self.reference = {split: self._score_all(reference, split) for split in self.splits}
        del reference
        return super().build_engine(world, overrides)

    @torch.no_grad()
    def _score_all(self, model, split: str) -> torch.Tensor:
        """(pairs, 2) reference log-probs of every pair of `split`, each rank scoring an equal share."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        pairs = self.splits[split].num_samples
        share = -(-pairs // world)
        mine = np.arange(rank * share, (rank + 1) * share)
        scores = torch.zeros(share, 2, dtype=torch.float64, device=self.device)
        size = self.plan.train.micro_batch_size
        for start in range(0, share, size):
            rows = np.minimum(mine[start : start + size], pairs - 1)  # the last share may run past the end
            scores[start : start + len(rows)] = torch.stack(
                sequence_logprobs(model, self.batch(split, rows)), dim=1
            ).double()
        if world > 1:
            gathered = [torch.zeros_like(scores) for _ in range(world)]
            dist.all_gather(gathered, scores)
            scores = torch.cat(gathered)
        return scores[:pairs]

    def pair_rewards(self, engine, split, indices):
        chosen, rejected = sequence_logprobs(engine, self.batch(split, indices))
        reference = self.reference[split][torch.from_numpy(np.maximum(indices, 0)).to(self.device)]  # (B, 2)
        return (self.beta * (chosen - reference[:, 0].float()), self.beta * (rejected - reference[:, 1].float()))

    def describe(self):
        return describe_checkpoint(self.plan.model, self.tokenizer, self.plan.dataset_dir, self.plan.train, stage="dpo")
