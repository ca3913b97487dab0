"""The gpu section without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from orchestrator.benchmarks.gpu import gpu_bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_section_is_skipped_without_cuda():
    assert gpu_bench() == {"skipped": "no CUDA device is present"}
