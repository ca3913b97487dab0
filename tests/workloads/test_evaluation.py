"""Training's evaluation arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

from tests.workloads.tiny_models import VOCAB, tiny_model
from tests.workloads.tiny_models import tokens as sample_tokens
from workloads.evaluation import evaluate
from workloads.model import ATTENTION_MASKS

T = 16


class PackedSamples:
    """`PackedDataset.get` for fixed samples: (tokens, segment ids), each (B, T + 1)."""

    def __init__(self, tokens: torch.Tensor, segments: torch.Tensor):
        self.tokens, self.segments = tokens, segments

    def get(self, indices: np.ndarray):
        return self.tokens[indices], self.segments[indices]


@pytest.mark.parametrize("mask", ATTENTION_MASKS)
def test_evaluation_follows_the_attention_mask(mask):
    model, tokens = tiny_model(attention_mask=mask), sample_tokens((2, T + 1))
    two_documents = torch.tensor([[0] * 6 + [1] * (T - 5)] * 2)  # (B, T + 1)

    def eval_loss(segments: torch.Tensor) -> float:
        dataset = PackedSamples(tokens, segments)
        metrics = evaluate(model, dataset, np.arange(2), 2, torch.ones(VOCAB), torch.device("cpu"))
        return metrics["eval/loss"]

    across, within = eval_loss(two_documents), eval_loss(torch.zeros_like(two_documents))
    assert (abs(across - within) < 1e-6) == (mask == "causal")
