"""Per-block transforms of the plain model: activation checkpointing and compiled blocks give the eager numbers."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tests.workloads.tiny_models import tiny_model
from tests.workloads.tiny_models import tokens as sample_tokens
from workloads.parallel.blocks import checkpoint_blocks, compile_blocks

T = 16


TWO_DOCUMENTS = torch.tensor([[0] * 6 + [1] * 10] * 2)  # (B=2, T)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_blocks_train_like_eager_blocks(checkpointing):
    torch._dynamo.reset()  # compile afresh, so that the counter below sees this test's graphs
    counters.clear()
    eager, compiled = tiny_model().train(), tiny_model().train()
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
