"""Pipeline parallelism: GPT cut into DeepSpeed pipeline stages, its train step and evaluation.

The model file stays as it is. This module wraps GPT's own pieces as pipeline
layers at the cut points `workloads/model.py` documents:

    (input_ids, segment_ids) ─► EmbeddingStage ─► BlockStage 0 … n_layers-1 ─► FinalNormStage ─► head ─► logits
                                  (x, segment_ids) flows between layers; each block rebuilds its attention inputs

Pipeline layers pass tuples of tensors, so the segment ids travel with the
activations and every stage rebuilds `(attn_bias, rope)` from them with the model's
`AttentionInputs`. With `tie_embeddings` the head multiplies by the token embedding
of the first stage: a DeepSpeed `TiedLayerSpec` keeps one copy on the first and one
on the last stage and all-reduces their gradients. The initial weights are those of
`GPT(cfg)` under the same seed, so a pipeline run starts where a plain run starts
and the two loss curves can be compared step by step.

The layout is `scaling.num_workers = pipeline_stages x data-parallel degree`;
DeepSpeed numbers ranks stage-major (rank = stage * dp_degree + dp_rank), and each
pipeline (one per data-parallel rank) trains on its own share of the global batch.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from workloads.checkpoints.initialization import initial_model
from workloads.evaluation import count_targets, eval_batch, eval_metrics
from workloads.model import (
    EMBEDDING_PREFIX,
    FINAL_NORM_PREFIX,
    GPT,
    HEAD_PREFIX,
    AttentionInputs,
    Block,
    Embedding,
    ModelConfig,
    block_prefix,
    lm_loss,
    make_norm,
)
from workloads.parallel.blocks import compile_blocks
from workloads.parallel.config import ParallelConfig
from workloads.parallel.engine import DeepSpeedConfig, build_engine
from workloads.train_config import TrainConfig

# ---------------------------------------------------------------------------
# GPT's pieces as pipeline layers
# ---------------------------------------------------------------------------
# Each layer names the prefix of its weights in GPT's state dict (`gpt_prefix`, from the model's own
# map `workloads.model.pipeline_layer_prefix`): the pipeline's initial weights are copied from a GPT
# built under the same seed.


class EmbeddingStage(Embedding):
    """First layer: (input_ids, segment_ids) -> (x (B, T, d_model), segment_ids)."""

    gpt_prefix = EMBEDDING_PREFIX

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, segment_ids = inputs
        return super().forward(input_ids), segment_ids


class BlockStage(Block):
    """GPT's block `index`: (x, segment_ids) -> (x, segment_ids), attention inputs rebuilt here."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__(cfg)
        self.gpt_prefix = block_prefix(index)
        # No parameters and only non-persistent buffers: the state dict stays the block's own.
        self.attention_inputs = AttentionInputs(cfg)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, segment_ids = inputs
        attn_bias, rope = self.attention_inputs(segment_ids, x.shape[1], x.dtype)
        return super().forward(x, attn_bias, rope), segment_ids


class FinalNormStage(nn.Module):
    """(x, segment_ids) -> normalised x (B, T, d_model); the segment ids are not needed past here."""

    gpt_prefix = FINAL_NORM_PREFIX

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.final_norm = make_norm(cfg)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, _segment_ids = inputs
        return self.final_norm(x)


class HeadStage(nn.Module):
    """Untied output head: x (B, T, d_model) -> logits (B, T, vocab_size)."""

    gpt_prefix = HEAD_PREFIX

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)


class TiedTokens(nn.Module):
    """The last stage's copy of the token embedding when the head is tied to it."""

    gpt_prefix = EMBEDDING_PREFIX

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)


def tied_head(embedding: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, vocab_size) from x (B, T, d_model) through the shared token embedding weight."""
    return F.linear(x, embedding.tokens.weight)


TIED_KEY = "token_embedding"


def pipeline_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """`lm_loss` in fp32, as the plain model computes it.

    Under bf16 autocast the plain model's cross-entropy runs inside the forward, where
    autocast computes it in fp32; the pipeline engine calls its loss outside the
    autocast region, so bf16 logits are upcast here.
    """
    return lm_loss(logits.float(), targets, reduction)


def pipeline_layers(cfg: ModelConfig) -> list:
    """Layer specs in model order (`workloads.model.pipeline_layer_prefix`): embedding, n_layers blocks,
    final norm, head."""
    # deepspeed: imported when a pipeline is built, so that the model and its plain engine import without it
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if cfg.tie_embeddings:
        # The first stage's spec has no forward_fn, so its module is a registered layer and
        # its weight goes into checkpoints; the last stage's copy is re-synchronised from it.
        first = TiedLayerSpec(TIED_KEY, EmbeddingStage, cfg, tied_weight_attr=["tokens.weight"])
        last = TiedLayerSpec(TIED_KEY, TiedTokens, cfg, forward_fn=tied_head, tied_weight_attr=["tokens.weight"])
    else:
        first, last = LayerSpec(EmbeddingStage, cfg), LayerSpec(HeadStage, cfg)
    blocks = [LayerSpec(BlockStage, cfg, index) for index in range(cfg.n_layers)]
    return [first, *blocks, LayerSpec(FinalNormStage, cfg), last]


def copy_gpt_weights(pipeline: nn.Module, gpt: GPT) -> None:
    """Load this rank's stage layers (and its tied copies) from a whole GPT's weights."""
    source = gpt.state_dict()
    for module in pipeline.modules():
        prefix = getattr(module, "gpt_prefix", None)
        if prefix is not None:
            module.load_state_dict({name: source[prefix + name] for name in module.state_dict()})


def build_pipeline_module(cfg: ModelConfig, parallel: ParallelConfig, seed: int):
    """GPT as a DeepSpeed `PipelineModule` of `parallel.pipeline_stages` stages, with GPT(cfg)'s initial weights
    under `seed`.

    Needs DeepSpeed's process group (`deepspeed.init_distributed`) first; the world size
    must be a multiple of the number of stages.
    """
    # deepspeed: as in pipeline_layers
    from deepspeed.pipe import PipelineModule

    reference = initial_model(cfg, seed)  # the plain model's initialisation, drawn in the same order
    pipeline = PipelineModule(
        layers=pipeline_layers(cfg),
        num_stages=parallel.pipeline_stages,
        loss_fn=pipeline_loss,
        partition_method=parallel.partition_method,
        activation_checkpoint_func=partial(checkpoint, use_reentrant=False),
        # Blocks only: the embedding's inputs are token ids, which carry no gradient.
        checkpointable_layers=[BlockStage.__name__],
    )
    if parallel.activation_checkpointing:
        pipeline.set_checkpoint_interval(1)  # each block on its own
    if parallel.compile_blocks:
        # DeepSpeed checkpoints around the layers, so here compiled blocks run inside the recompute.
        compile_blocks(layer for layer in pipeline.modules() if isinstance(layer, BlockStage))
    copy_gpt_weights(pipeline, reference)
    count_every_stage_in_grad_norm(pipeline)
    return pipeline


def count_every_stage_in_grad_norm(pipeline) -> None:
    """Make DeepSpeed's fp32 ZeRO-0 gradient clipping see the whole model's gradient norm.

    That path (`deepspeed.runtime.utils.clip_grad_norm_`) counts a parameter only on the
    first stage unless the parameter is marked model-parallel, so later stages' gradients
    were left out of the norm and clipping differed from the plain model's. Every
    parameter is marked except the last stage's copy of a tied weight
    (`ds_pipe_replicated`), which the first stage already counts. The ZeRO-1 and bf16
    paths count per stage anyway; the mark changes nothing there.
    """
    for param in pipeline.parameters():
        param.model_parallel = not getattr(param, "ds_pipe_replicated", False)


# ---------------------------------------------------------------------------
# Engine, training step and evaluation
# ---------------------------------------------------------------------------


def build_pipeline_engine(
    cfg: ModelConfig,
    parallel: ParallelConfig,
    ds: DeepSpeedConfig,
    train: TrainConfig,
    data_parallel: int,
    on_gpu: bool,
    overrides: dict[str, Any] | None = None,
):
    """A DeepSpeed `PipelineEngine` with the same optimizer, schedule and config as `build_engine`.

    `data_parallel` is the number of pipelines (num_workers / pipeline_stages).
    """
    import deepspeed  # deepspeed: importing it is slow and only workers need it

    # PipelineModule builds its process groups through DeepSpeed's comm layer, which
    # must wrap the process group Ray Train already started before the module exists.
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    return build_engine(build_pipeline_module(cfg, parallel, train.seed), ds, train, data_parallel, on_gpu, overrides)


def data_parallel_coordinates(engine) -> tuple[int, int]:
    """(data-parallel rank, data-parallel degree) of this rank: which pipeline it is in, and how many there are."""
    return engine.grid.get_data_parallel_rank(), engine.grid.get_data_parallel_world_size()


def _pipe_micro_batch(dataset, indices: np.ndarray):
    """((input_ids, segment_ids), targets), each (B, T): what the first and the last stage read."""
    tokens, segments = dataset.get(indices)
    return (tokens[:, :-1], segments[:, :-1]), tokens[:, 1:]


def pipeline_train_step(engine, dataset, micro_batches: list[np.ndarray], device) -> float:
    """One optimizer step of this pipeline over its micro-batches; returns the global mean loss.

    `micro_batches` is this data-parallel group's share of the global batch. Only the
    first and the last stage read data (the generator is lazy). The engine averages
    the loss over micro-batches and data-parallel groups and broadcasts it along the
    pipeline, so every rank, the chief included, returns the same value. `device` is
    unused (the engine places the batches) and kept so that the step matches `train_step`.
    """
    loss = engine.train_batch(iter(_pipe_micro_batch(dataset, indices) for indices in micro_batches))
    return loss.item()


@torch.no_grad()
def pipeline_evaluate(
    engine, dataset, indices: np.ndarray, micro_batch_size: int, byte_lengths: torch.Tensor, device
) -> dict:
    """`workloads.evaluation.evaluate` for pipelines: loss, ppl and bpb over this pipeline's `indices`.

    The last stage sums nats in place of the mean training loss and counts the tokens
    and bytes it scored; one all-reduce over all ranks (zeros elsewhere) gives every
    rank the totals.
    """
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes

    def counted(micro_batches: list[np.ndarray]):
        for part in micro_batches:
            inputs, segments, targets = eval_batch(dataset, part)
            totals[1:] += torch.stack(count_targets(targets.to(device), byte_lengths))
            yield (inputs, segments), targets

    full = len(indices) // micro_batch_size * micro_batch_size
    # Full micro-batches run as one pipelined batch; a smaller remainder runs on its own,
    # with the activation buffers re-sized for it and back (p2p buffers assume one shape).
    runs = [(indices[:full], micro_batch_size, False), (indices[full:], len(indices) - full, True)]
    training_loss = engine.module.loss_fn
    engine.module.loss_fn = partial(pipeline_loss, reduction="sum")
    try:
        for chunk, size, reshaped in runs:
            if len(chunk) == 0:
                continue
            if reshaped:
                engine.reset_activation_shape()
            micro_batches = list(np.asarray(chunk).reshape(-1, size))
            nats = engine.eval_batch(
                counted(micro_batches), reduce_output=None, bcast_loss=False, num_micro_batches=len(micro_batches)
            )
            if reshaped:
                engine.reset_activation_shape()
            if engine.is_last_stage():
                totals[0] += sum(value.double() for value in nats).to(device)
    finally:
        engine.module.loss_fn = training_loss
    if not engine.is_last_stage():
        totals.zero_()  # the first stage read the same samples: count them once
    dist.all_reduce(totals)
    return eval_metrics(totals)
