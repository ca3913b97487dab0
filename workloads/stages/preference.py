"""What the reward-model and DPO stages share: preference pairs, one pair one sample, pairwise metrics.

Both score a pair by a margin (reward of chosen minus reward of rejected) and train
on the Bradley-Terry loss -log sigmoid(margin); they differ in where the rewards come
from (`pair_rewards`). Held-out metrics: loss, preference accuracy (margin > 0),
mean margin and mean rewards, summed over every rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from workloads.evaluation import PADDING_INDEX, eval_sample_indices
from workloads.model import training_flops_per_token
from workloads.stages.base import Stage, WorkerPlan
from workloads.stages.datasets import TOKENIZER_FILE, PreferenceSplit
from workloads.tokenizer import Tokenizer

PAIR_METRICS = ("loss", "accuracy", "margin", "reward_chosen", "reward_rejected")


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair values (B,) of each PAIR_METRICS entry from the two rewards (B,)."""
    margin = chosen - rejected
    return {
        "loss": -F.logsigmoid(margin),
        "accuracy": (margin > 0).float(),
        "margin": margin,
        "reward_chosen": chosen,
        "reward_rejected": rejected,
    }


class PreferenceStage(Stage):
    evaluate_at_start = True  # the starting model's preference accuracy is the baseline

    def __init__(self, plan: WorkerPlan, device: torch.device, on_gpu: bool):
        super().__init__(plan, device, on_gpu)
        self.splits = {split: PreferenceSplit(plan.dataset_dir, split) for split in ("train", "val")}
        self.seq_len = self.splits["train"].manifest["seq_len"]
        self.tokenizer = Tokenizer.load(Path(plan.dataset_dir) / TOKENIZER_FILE)
        self.flops_per_token = training_flops_per_token(plan.model, self.seq_len)

    @property
    def num_train_samples(self) -> int:
        return self.splits["train"].num_samples

    @property
    def tokens_per_sample(self) -> int:
        return 2 * self.seq_len  # a pair is two sequences

    def batch(self, split: str, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in self.splits[split].get(indices).items()}

    def pair_rewards(self, engine, split: str, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) rewards (B,) of the pairs at `indices` of `split`."""
        raise NotImplementedError

    def train_step(self, engine, micro_batches):
        totals = dict.fromkeys(PAIR_METRICS, 0.0)
        for indices in micro_batches:
            values = pair_metrics(*self.pair_rewards(engine, "train", indices))
            loss = values["loss"].mean()
            engine.backward(loss)
            engine.step()
            for key, value in values.items():
                totals[key] += value.mean().item() / len(micro_batches)
        return {f"train/{key}": value for key, value in totals.items()}

    @torch.no_grad()
    def evaluate(self, engine, dp_rank, dp_world):
        engine.eval()
        val = self.splits["val"]
        indices = eval_sample_indices(val.num_samples, self.plan.train.eval_samples, dp_rank, dp_world)
        sums = torch.zeros(len(PAIR_METRICS) + 1, dtype=torch.float64, device=self.device)  # ..., pairs
        size = self.plan.train.micro_batch_size
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            counted = torch.from_numpy(chunk != PADDING_INDEX).to(self.device)  # padding slots score nothing
            values = pair_metrics(*self.pair_rewards(engine, "val", chunk))
            sums[:-1] += torch.stack([(values[key] * counted).sum().double() for key in PAIR_METRICS])
            sums[-1] += counted.sum()
        if dist.is_initialized():
            dist.all_reduce(sums)
        engine.train()
        return {f"eval/{key}": value for key, value in zip(PAIR_METRICS, (sums[:-1] / sums[-1]).tolist())}

    def progress(self, metrics):
        return (
            f"loss {metrics['train/loss']:.4f} | accuracy {metrics['train/accuracy']:.3f} | "
            f"margin {metrics['train/margin']:.3f}"
        )

    def eval_line(self, metrics):
        return (
            f"loss {metrics['eval/loss']:.4f} | accuracy {metrics['eval/accuracy']:.3f} | "
            f"margin {metrics['eval/margin']:.3f}"
        )
