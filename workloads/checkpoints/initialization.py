"""The weights training starts from: a seeded random init, or those `model.init_from` names.

`hf:DIR` is a Hugging Face Llama checkpoint; `checkpoint:DIR` a checkpoint of this
project (the driver resolves run directories and MLflow run ids to one).
"""

from __future__ import annotations

import torch

from workloads.checkpoints.loading import load_weights_into, read_language_model_weights
from workloads.hf_interop import load_hf_weights
from workloads.model import GPT, ModelConfig


def initial_model(cfg: ModelConfig, seed: int) -> GPT:
    """GPT(cfg) as every layout starts it (the same weights on every rank and every layout)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    if cfg.init_from.startswith("hf:"):
        load_hf_weights(model, cfg.init_from.removeprefix("hf:"))
    elif cfg.init_from.startswith("checkpoint:"):
        source = cfg.init_from.removeprefix("checkpoint:")
        load_weights_into(model, read_language_model_weights(source, cfg), source)
    return model
