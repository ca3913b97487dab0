"""A model family: the shape for a parameter count, its exact counts and its learning rate.

Sizes are counted in non-embedding parameters (Kaplan et al. 2020): every block
weight and norm, not the token embedding (nor learned positions, nor an untied
output head). Two other counts are kept beside it: with the output head's
weights (vocab x d_model, a real matmul per token even when tied to the
embedding) and the total of trainable parameters. Compute is never 6N: it is
`training_flops_per_token` of the exact shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from orchestrator.scaling_laws.sweep_config import FamilyConfig
from workloads.model import ModelConfig, count_parameters, training_flops_per_token

MAX_LAYERS = 256


@dataclass(frozen=True)
class Size:
    """One model of the family."""

    model: ModelConfig
    N: int  # non-embedding parameters
    N_head: int  # non-embedding + output head (vocab x d_model)
    N_total: int  # all trainable parameters (a tied embedding/head counted once)

    @property
    def key(self) -> str:
        """Names the size in trial names: its shape."""
        return f"L{self.model.n_layers}-d{self.model.d_model}"

    def shape(self) -> dict[str, Any]:
        m = self.model
        return {
            "n_layers": m.n_layers,
            "d_model": m.d_model,
            "n_heads": m.n_heads,
            "vocab_size": m.vocab_size,
            "ffn_hidden": m.resolved_ffn_hidden,
            "N_head": self.N_head,
        }

    def flops_per_token(self, seq_len: int) -> int:
        return training_flops_per_token(self.model, seq_len)


def sized(base: ModelConfig, n_layers: int, d_model: int, head_dim: int) -> Size:
    """The base model config at this depth and width (n_heads = d_model / head_dim, plain multi-head attention)."""
    model = dataclasses.replace(
        base, n_layers=n_layers, d_model=d_model, n_heads=d_model // head_dim, n_kv_heads=0, ffn_hidden=0
    )
    embedding = model.vocab_size * d_model
    total = count_parameters(model)
    outside_blocks = embedding * (1 if model.tie_embeddings else 2)
    if model.position == "learned":
        outside_blocks += model.max_seq_len * d_model
    N = total - outside_blocks
    return Size(model, N, N + embedding, total)


def size_for(target_N: float, base: ModelConfig, family: FamilyConfig) -> Size:
    """The family's model whose non-embedding count is nearest `target_N`.

    Depth follows N ~ 12 n_layers d_model^2 at d_model = aspect_ratio x n_layers; the width
    is then the multiple of head_dim whose exact count is nearest (in log) to the target.
    """
    depth = round((target_N / (12 * family.aspect_ratio**2)) ** (1 / 3))
    depth = min(MAX_LAYERS, max(1, depth))
    ideal_width = math.sqrt(target_N / (12 * depth))
    candidates = {max(1, math.floor(ideal_width / family.head_dim) + k) for k in range(-1, 3)}
    sizes = [sized(base, depth, units * family.head_dim, family.head_dim) for units in sorted(candidates)]
    return min(sizes, key=lambda s: abs(math.log(s.N / target_N)))


def family_lr(size: Size, family: FamilyConfig) -> float:
    """The family's peak learning rate for this size: lr x (lr_width / d_model)^lr_width_power."""
    return family.lr * (family.lr_width / size.model.d_model) ** family.lr_width_power
