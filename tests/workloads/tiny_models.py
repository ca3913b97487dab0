"""The tiny models the model-level tests build: a 2-layer, 32-wide GPT over a 61-token vocabulary."""

from __future__ import annotations

import torch

from workloads.model import GPT, ModelConfig

VOCAB = 61


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=24)
    return ModelConfig(**{**fields, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GPT:
    """The tiny model with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    return GPT(tiny(**overrides)).eval()


def tokens(shape, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))
