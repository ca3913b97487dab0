"""The model on a CUDA device (skipped without one): flash attention under bf16 against fp32."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo

from tests.workloads.tiny_models import VOCAB
from tests.workloads.tiny_models import tokens as sample_tokens
from workloads.model import GPT, ModelConfig

T = 16


TWO_DOCUMENTS = torch.tensor([[0] * 6 + [1] * 10] * 2)  # (B=2, T)


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
