"""Validation: loss, perplexity and bits per byte over a fixed set of samples.

Bits per byte is tokenizer-independent: summed nats over the predicted tokens /
the UTF-8 bytes those tokens decode to / ln 2, so models with different
vocabularies (or a character model) can be compared.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist


def eval_sample_indices(num_samples: int, wanted: int, rank: int, world: int) -> np.ndarray:
    """The same spread-out validation samples on every evaluation; an equal share per rank.

    Equal shares matter: under ZeRO-3 every rank must run the same number of forwards.
    """
    count = (min(wanted, num_samples) // world) * world
    chosen = np.linspace(0, num_samples - 1, num=count).round().astype(np.int64)
    return np.array_split(chosen, world)[rank]


@torch.no_grad()
def evaluate(engine, dataset, indices: np.ndarray, micro_batch_size: int, byte_lengths: torch.Tensor, device) -> dict:
    engine.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    for start in range(0, len(indices), micro_batch_size):
        tokens, segments = dataset.get(indices[start : start + micro_batch_size])
        tokens, segments = tokens.to(device), segments.to(device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T)
        nats = engine(inputs, targets=targets, segment_ids=segments[:, :-1], reduction="sum")
        totals[0] += nats.double()
        totals[1] += targets.numel()
        totals[2] += byte_lengths[targets].sum().double()
    if dist.is_initialized():
        dist.all_reduce(totals)
    engine.train()
    return eval_metrics(totals)


def eval_metrics(totals: torch.Tensor) -> dict[str, float]:
    """Loss, perplexity and bits per byte from all-reduced (nats, tokens, bytes) totals."""
    nats, count, num_bytes = totals.tolist()
    loss = nats / count
    return {"eval/loss": loss, "eval/ppl": math.exp(min(loss, 50.0)), "eval/bpb": nats / num_bytes / math.log(2)}
