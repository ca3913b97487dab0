"""The GPU-path options: `model.attention_mask` in every consumer, flash attention, compiled blocks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from workloads.evaluation import evaluate
from workloads.model import ATTENTION_MASKS, GPT, ModelConfig
from workloads.pipeline import BlockStage, checkpoint_blocks, compile_blocks

VOCAB, T = 61, 16
TWO_DOCUMENTS = torch.tensor([[0] * 6 + [1] * 10] * 2)  # (B=2, T)
ONE_DOCUMENT = torch.zeros_like(TWO_DOCUMENTS)


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=24), **overrides})


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny(**overrides))


def sample_tokens(shape) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(1))


# --- model.attention_mask in the pipeline stages and in evaluation ----------------------

@pytest.mark.parametrize("mask", ATTENTION_MASKS)
def test_pipeline_blocks_follow_the_attention_mask(mask):
    torch.manual_seed(0)
    stage = BlockStage(tiny(attention_mask=mask), index=0)
    x = torch.randn(2, T, 32)  # (B, T, d_model)
    across, _ = stage((x, TWO_DOCUMENTS))
    within, _ = stage((x, ONE_DOCUMENT))
    assert torch.allclose(across, within, atol=1e-6, rtol=0) == (mask == "causal")


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash attention kernels need a CUDA device")
def test_causal_attention_mask_runs_flash_attention_in_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = ModelConfig(vocab_size=VOCAB, d_model=128, n_layers=2, n_heads=2, max_seq_len=T)  # head dim 64
    tokens, segments = sample_tokens((2, T + 1)).cuda(), TWO_DOCUMENTS.cuda()

    def forward_backward(attention_mask: str) -> None:
        torch.manual_seed(0)
        model = GPT(dataclasses.replace(cfg, attention_mask=attention_mask)).cuda()
        # Only the flash kernel is allowed: SDPA raises instead of falling back to another one.
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(tokens[:, :-1], tokens[:, 1:], segment_ids=segments)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            loss.backward()
        assert loss.isfinite()

    forward_backward("causal")
    with pytest.raises(RuntimeError):
        forward_backward("document")  # the per-document mask rules flash out


# --- parallel.compile_blocks --------------------------------------------------------------

def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_blocks_train_like_eager_blocks(checkpointing):
    torch._dynamo.reset()  # compile afresh, so that the counter below sees this test's graphs
    counters.clear()
    eager, compiled = tiny_model(), tiny_model()
    if checkpointing:
        for model in (eager, compiled):
            checkpoint_blocks(model)
    compile_blocks(compiled.blocks)
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.5) for model in (eager, compiled)]
    tokens = sample_tokens((2, T + 1))
    for _ in range(2):
        losses = [model(tokens[:, :-1], tokens[:, 1:], segment_ids=TWO_DOCUMENTS) for model in (eager, compiled)]
        for loss in losses:
            loss.backward()
        assert relative_error(losses[1], losses[0]) < 1e-5
        for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
            assert relative_error(p_compiled.grad, p_eager.grad) < 1e-5, name
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    # The blocks really ran compiled: a forward dynamo cannot trace would silently run eagerly.
    assert counters["stats"]["unique_graphs"] >= 1
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their names
