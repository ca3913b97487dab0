"""Validation: loss, perplexity and bits per byte over a fixed set of samples.

Bits per byte is tokenizer-independent: summed nats over the predicted tokens /
the UTF-8 bytes those tokens decode to / ln 2, so models with different
vocabularies (or a character model) can be compared.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

IGNORED_TARGET = -100  # cross-entropy's ignore_index: a position that is scored as nothing
PADDING_INDEX = -1  # an eval slot with no sample behind it


def eval_sample_indices(num_samples: int, wanted: int, rank: int, world: int) -> np.ndarray:
    """This rank's share of the validation samples: the same samples at any world size.

    The samples are spread evenly over the split and do not depend on `world`, so
    `eval/*` (and the best checkpoint's ranking) stay comparable across worker counts
    and elastic resumes. Shares are padded with PADDING_INDEX to equal length, because
    under ZeRO-3 every rank must run the same number of forwards; padding scores nothing.
    """
    count = min(wanted, num_samples)
    chosen = np.linspace(0, num_samples - 1, num=count).round().astype(np.int64)
    share = -(-count // world)
    padded = np.full(share * world, PADDING_INDEX, dtype=np.int64)
    padded[:count] = chosen
    return padded.reshape(world, share)[rank]


def eval_batch(dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, segment_ids, targets), each (B, T), for eval slots `indices`; padding slots
    read sample 0 and get IGNORED_TARGET everywhere, so they add no nats, tokens or bytes."""
    indices = np.asarray(indices)
    tokens, segments = dataset.get(np.maximum(indices, 0))
    targets = tokens[:, 1:].clone()
    targets[torch.from_numpy(indices == PADDING_INDEX)] = IGNORED_TARGET
    return tokens[:, :-1], segments[:, :-1], targets


def count_targets(targets: torch.Tensor, byte_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, bytes) that the scored targets stand for, as float64 scalars."""
    scored = targets != IGNORED_TARGET
    return scored.sum().double(), byte_lengths[targets.clamp(min=0)][scored].sum().double()


@torch.no_grad()
def evaluate(engine, dataset, indices: np.ndarray, micro_batch_size: int, byte_lengths: torch.Tensor, device) -> dict:
    engine.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    # A dataset may bring its own eval batches (inputs, segment ids, targets) with targets it does not score.
    batch_of = dataset.get if hasattr(dataset, "scored_targets") else partial(eval_batch, dataset)
    for start in range(0, len(indices), micro_batch_size):
        inputs, segments, targets = (t.to(device) for t in batch_of(indices[start : start + micro_batch_size]))
        nats = engine(inputs, targets=targets, segment_ids=segments, reduction="sum")
        totals[0] += nats.double()
        totals[1:] += torch.stack(count_targets(targets, byte_lengths))
    if dist.is_initialized():
        dist.all_reduce(totals)
    engine.train()
    return eval_metrics(totals)


def eval_metrics(totals: torch.Tensor) -> dict[str, float]:
    """Loss, perplexity and bits per byte from all-reduced (nats, tokens, bytes) totals."""
    nats, count, num_bytes = totals.tolist()
    loss = nats / count
    return {"eval/loss": loss, "eval/ppl": math.exp(min(loss, 50.0)), "eval/bpb": nats / num_bytes / math.log(2)}


@torch.no_grad()
def score_tokens(
    model, tokens: list[int], window: int, batch_size: int, byte_lengths: torch.Tensor, device
) -> torch.Tensor:
    """(nats, tokens, bytes) float64 totals for predicting tokens[1:] from what precedes each,
    in consecutive windows of `window` predictions (each token scored once; the context starts
    afresh at every window, as in training's packed samples)."""
    ids = torch.as_tensor(tokens, dtype=torch.long)
    starts = list(range(0, max(len(ids) - 1, 0), window))
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        inputs = torch.zeros(len(chunk), window, dtype=torch.long)
        targets = torch.full((len(chunk), window), IGNORED_TARGET, dtype=torch.long)
        for row, start in enumerate(chunk):
            piece = ids[start : start + window + 1]  # a short last window is padded at its end: causal
            inputs[row, : len(piece) - 1] = piece[:-1]  # attention never lets padding reach earlier tokens
            targets[row, : len(piece) - 1] = piece[1:]
        inputs, targets = inputs.to(device), targets.to(device)
        totals[0] += model(inputs, targets=targets, reduction="sum").double()
        totals[1:] += torch.stack(count_targets(targets, byte_lengths))
    return totals
