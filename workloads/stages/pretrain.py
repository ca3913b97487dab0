"""Pretraining as a stage: next-token loss over packed token shards, plain or pipelined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workloads.checkpoints.initialization import initial_model
from workloads.checkpoints.loading import describe_checkpoint
from workloads.data.loader import PackedDataset
from workloads.data.shards import TOKENIZER_FILE
from workloads.evaluation import eval_sample_indices, evaluate
from workloads.model import training_flops_per_token
from workloads.parallel.pipeline import (
    build_pipeline_engine,
    data_parallel_coordinates,
    pipeline_evaluate,
    pipeline_train_step,
)
from workloads.stages.base import Stage, WorkerPlan
from workloads.tokenizer import Tokenizer


def train_step(engine, dataset, micro_batches: list[np.ndarray], device) -> float:
    """One optimizer step over this rank's micro-batches; returns the rank's mean loss."""
    losses = []
    for indices in micro_batches:
        tokens, segments = dataset.get(indices)  # int32, as stored: the loss widens the targets on the device
        tokens, segments = tokens.to(device, non_blocking=True), segments.to(device, non_blocking=True)
        loss = engine(tokens[:, :-1], targets=tokens[:, 1:], segment_ids=segments[:, :-1])  # inputs/targets (B, T)
        engine.backward(loss)
        engine.step()  # DeepSpeed applies the optimizer only at the accumulation boundary
        losses.append(loss.item())
    return sum(losses) / len(losses)


class PretrainStage(Stage):
    name = "pretrain"

    def __init__(self, plan: WorkerPlan, device: torch.device, on_gpu: bool):
        super().__init__(plan, device, on_gpu)
        self.train_set = PackedDataset(plan.dataset_dir, "train")
        self.val_set = PackedDataset(plan.dataset_dir, "val")
        self.tokenizer = Tokenizer.load(Path(plan.dataset_dir) / TOKENIZER_FILE)
        self.byte_lengths = torch.tensor(self.tokenizer.token_byte_lengths(), device=device)
        self.pipelined = plan.parallel.pipeline_stages > 1
        self.step_metrics_are_global = self.pipelined  # a pipeline step returns the global mean on every rank
        self.flops_per_token = training_flops_per_token(plan.model, self.train_set.seq_len)

    @property
    def num_train_samples(self) -> int:
        return self.train_set.num_samples

    @property
    def tokens_per_sample(self) -> int:
        return self.train_set.seq_len

    def build_model(self):
        return initial_model(self.plan.model, self.plan.train.seed)  # identical on every rank and every layout

    def build_engine(self, world: int, overrides):
        if not self.pipelined:
            return super().build_engine(world, overrides)
        plan = self.plan
        # The stages start from GPT(plan.model)'s weights under the same seed, like every other layout.
        engine = build_pipeline_engine(
            plan.model,
            plan.parallel,
            plan.deepspeed,
            plan.train,
            world // plan.parallel.pipeline_stages,
            self.on_gpu,
            overrides,
        )
        # Ranks of one pipeline share a data-parallel rank: they read the same samples.
        dp_rank, dp_world = data_parallel_coordinates(engine)
        return engine, dp_rank, dp_world

    def reads_data(self, engine) -> bool:
        return not self.pipelined or engine.is_first_stage()

    def train_step(self, engine, micro_batches):
        step = pipeline_train_step if self.pipelined else train_step
        return {"train/loss": step(engine, self.train_set, micro_batches, self.device)}

    def evaluate(self, engine, dp_rank, dp_world):
        indices = eval_sample_indices(self.val_set.num_samples, self.plan.train.eval_samples, dp_rank, dp_world)
        evaluate_fn = pipeline_evaluate if self.pipelined else evaluate
        return evaluate_fn(
            engine, self.val_set, indices, self.plan.train.micro_batch_size, self.byte_lengths, self.device
        )

    def describe(self):
        return describe_checkpoint(self.plan.model, self.tokenizer, self.plan.dataset_dir, self.plan.train)

    def eval_line(self, metrics):
        return f"loss {metrics['eval/loss']:.4f} | ppl {metrics['eval/ppl']:.2f} | bpb {metrics['eval/bpb']:.4f}"
