"""The pipeline engine's pieces: GPT cut into DeepSpeed pipeline layers, against the plain model and engine."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch._dynamo

from tests.workloads.tiny_models import tiny
from workloads.evaluation import evaluate
from workloads.model import ATTENTION_MASKS, GPT, ModelConfig
from workloads.parallel.blocks import checkpoint_blocks
from workloads.parallel.config import ParallelConfig
from workloads.parallel.engine import DeepSpeedConfig, build_engine
from workloads.parallel.pipeline import (
    BlockStage,
    build_pipeline_engine,
    build_pipeline_module,
    pipeline_evaluate,
    pipeline_train_step,
)
from workloads.stages.pretrain import train_step
from workloads.train_config import TrainConfig

T = 16


TWO_DOCUMENTS = torch.tensor([[0] * 6 + [1] * 10] * 2)  # (B=2, T)


ONE_DOCUMENT = torch.zeros_like(TWO_DOCUMENTS)


@pytest.mark.parametrize("mask", ATTENTION_MASKS)
def test_pipeline_blocks_follow_the_attention_mask(mask):
    torch.manual_seed(0)
    stage = BlockStage(tiny(attention_mask=mask), index=0)
    x = torch.randn(2, T, 32)  # (B, T, d_model)
    across, _ = stage((x, TWO_DOCUMENTS))
    within, _ = stage((x, ONE_DOCUMENT))
    assert torch.allclose(across, within, atol=1e-6, rtol=0) == (mask == "causal")


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_rank_group():
    """DeepSpeed's comm layer over a 1-rank gloo group, as PipelineModule needs one."""
    import deepspeed
    import torch.distributed as dist

    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(unused_port()),
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "LOCAL_SIZE": "1",
        }.items():
            env.setenv(name, value)
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
        yield
        dist.destroy_process_group()


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig(vocab_size=96, d_model=32, n_layers=3, n_heads=2, max_seq_len=16, **changes)


def packed_batch(cfg: ModelConfig):
    """Token ids (2, 13) and segment ids with a document boundary inside the first row."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 13), generator=generator)
    segments = torch.tensor([[0] * 5 + [1] * 8, [0] * 13])
    return tokens[:, :-1], tokens[:, 1:], segments[:, :-1]


def gpt_named_values(pipeline, grads: bool = False) -> dict[str, torch.Tensor]:
    """The pipeline's parameters (or their gradients) under the names GPT gives them."""
    values = {}
    for module in pipeline.modules():
        prefix = getattr(module, "gpt_prefix", None)
        if prefix is None:
            continue
        for name, param in module.named_parameters():
            values[prefix + name] = param.grad if grads else param.detach()
    return values


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("position", ["rope", "learned", "alibi"])
def test_pipeline_module_starts_from_the_plain_models_weights(one_rank_group, tied, position):
    cfg = tiny_config(tie_embeddings=tied, position=position)
    torch.manual_seed(7)
    reference = GPT(cfg)
    pipeline = build_pipeline_module(cfg, ParallelConfig(), seed=7)

    weights = gpt_named_values(pipeline)
    expected = dict(reference.named_parameters())  # a tied head appears once, as embed.tokens.weight
    assert sorted(weights) == sorted(expected)
    for name, value in weights.items():
        assert torch.equal(value, expected[name]), name

    inputs, targets, segments = packed_batch(cfg)
    plain_loss = reference(inputs, targets=targets, segment_ids=segments)
    pipeline_loss = pipeline.loss_fn(pipeline((inputs, segments)), targets)
    assert torch.equal(pipeline_loss, plain_loss)

    plain_loss.backward()
    pipeline_loss.backward()
    grads = gpt_named_values(pipeline, grads=True)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)


class PackedSamples:
    """A stand-in for PackedDataset: sample i is 13 seeded tokens in two documents."""

    def __init__(self, cfg: ModelConfig):
        self.vocab_size = cfg.vocab_size

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack(
            [torch.randint(0, self.vocab_size, (13,), generator=torch.Generator().manual_seed(int(i))) for i in indices]
        )  # (B, T + 1)
        segments = (torch.arange(13) >= 6).long().expand(len(indices), 13)
        return tokens, segments


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pipeline_engine_trains_and_evaluates_like_the_plain_engine(one_rank_group, precision):
    """One stage, so no activations travel; the engine, its step, loss and evaluation are the pipeline's own."""
    cfg = tiny_config()
    ds = DeepSpeedConfig(zero_stage=0, precision=precision)
    train = TrainConfig(micro_batch_size=2, grad_accum_steps=2, seed=5, warmup_steps=1, max_steps=3)
    data, cpu = PackedSamples(cfg), torch.device("cpu")
    torch.manual_seed(train.seed)
    plain = build_engine(GPT(cfg), ds, train, 1, on_gpu=False)
    pipeline = build_pipeline_engine(cfg, ParallelConfig(), ds, train, 1, on_gpu=False)

    for step in range(3):
        micro_batches = [np.arange(4 * step, 4 * step + 2), np.arange(4 * step + 2, 4 * step + 4)]
        expected = train_step(plain, data, micro_batches, cpu)
        assert pipeline_train_step(pipeline, data, micro_batches, cpu) == pytest.approx(expected, rel=1e-6), step

    indices = np.arange(100, 105)  # two micro-batches of 2 and a remainder of 1
    byte_lengths = torch.arange(1, cfg.vocab_size + 1)
    expected = evaluate(plain, data, indices, 2, byte_lengths, cpu)
    assert pipeline_evaluate(pipeline, data, indices, 2, byte_lengths, cpu) == pytest.approx(expected, rel=1e-6)


def attention_calls(modules) -> list[int]:
    """A counter of attention forwards: a checkpointed block runs its forward again in backward."""
    calls = [0]
    for module in modules:
        module.attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_activation_checkpointing_recomputes_blocks_without_changing_the_numbers(one_rank_group):
    cfg = tiny_config()
    inputs, targets, segments = packed_batch(cfg)

    torch.manual_seed(3)
    reference = GPT(cfg)
    reference(inputs, targets=targets, segment_ids=segments).backward()

    torch.manual_seed(3)
    checkpointed = checkpoint_blocks(GPT(cfg))
    assert checkpointed.state_dict().keys() == reference.state_dict().keys()
    calls = attention_calls(checkpointed.blocks)
    loss = checkpointed(inputs, targets=targets, segment_ids=segments)
    loss.backward()
    assert calls[0] == 2 * cfg.n_layers
    for (name, param), (_, expected) in zip(checkpointed.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(param.grad, expected.grad, msg=name)

    pipeline = build_pipeline_module(cfg, ParallelConfig(activation_checkpointing=True), seed=3)
    calls = attention_calls(m for m in pipeline.modules() if type(m).__name__ == "BlockStage")
    pipeline_loss = pipeline.loss_fn(pipeline((inputs, segments)), targets)
    pipeline_loss.backward()
    assert calls[0] == 2 * cfg.n_layers
    assert torch.equal(pipeline_loss, loss)
    grads = gpt_named_values(pipeline, grads=True)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)
