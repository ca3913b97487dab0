"""Supervised fine-tuning: next-token loss on response tokens only, examples packed with per-example masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from workloads.checkpoints.initialization import initial_model
from workloads.checkpoints.loading import describe_checkpoint
from workloads.evaluation import eval_sample_indices, evaluate
from workloads.model import training_flops_per_token
from workloads.stages.base import Stage, WorkerPlan
from workloads.stages.datasets import TOKENIZER_FILE, SFTSplit
from workloads.tokenizer import Tokenizer


class SFTStage(Stage):
    name = "sft"
    evaluate_at_start = True  # the starting model's held-out response loss is the baseline

    def __init__(self, plan: WorkerPlan, device: torch.device, on_gpu: bool):
        super().__init__(plan, device, on_gpu)
        self.train_set = SFTSplit(plan.dataset_dir, "train")
        self.val_set = SFTSplit(plan.dataset_dir, "val")
        self.seq_len = self.train_set.manifest["seq_len"]
        self.tokenizer = Tokenizer.load(Path(plan.dataset_dir) / TOKENIZER_FILE)
        self.byte_lengths = torch.tensor(self.tokenizer.token_byte_lengths(), device=device)
        # Examples are packed several to a row: attention must stay inside each one.
        self.model_config = dataclasses.replace(plan.model, attention_mask="document")
        self.flops_per_token = training_flops_per_token(self.model_config, self.seq_len)

    @property
    def num_train_samples(self) -> int:
        return self.train_set.num_samples

    @property
    def tokens_per_sample(self) -> int:
        return self.seq_len

    def build_model(self):
        return initial_model(self.model_config, self.plan.train.seed)

    def train_step(self, engine, micro_batches):
        losses = []
        for indices in micro_batches:
            inputs, segments, targets = (t.to(self.device) for t in self.train_set.get(indices))
            loss = engine(inputs, targets=targets, segment_ids=segments)  # mean over response tokens
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        return {"train/loss": sum(losses) / len(losses)}

    def evaluate(self, engine, dp_rank, dp_world):
        """Held-out response loss (per response token), perplexity and bits per byte of the responses."""
        indices = eval_sample_indices(self.val_set.num_samples, self.plan.train.eval_samples, dp_rank, dp_world)
        return evaluate(engine, self.val_set, indices, self.plan.train.micro_batch_size, self.byte_lengths, self.device)

    def describe(self):
        return describe_checkpoint(
            self.model_config, self.tokenizer, self.plan.dataset_dir, self.plan.train, stage="sft"
        )

    def eval_line(self, metrics):
        return (
            f"response loss {metrics['eval/loss']:.4f} | ppl {metrics['eval/ppl']:.2f} | bpb {metrics['eval/bpb']:.4f}"
        )
