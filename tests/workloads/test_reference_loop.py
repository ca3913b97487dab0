"""The bare reference loops: they train and time every step; nothing here depends on how fast the machine is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.stages.pretrain import PRETRAIN
from tests.helpers import write_random_dataset
from workloads.reference_loop import bare_loop, steady_tokens_per_s, train_steps_on_device

SEQ_LEN = 16
VOCAB = 512  # the tiny recipe's


@pytest.fixture
def dataset_dir(tmp_path):
    return write_random_dataset(tmp_path, SEQ_LEN, VOCAB)


def test_bare_loop_trains_and_times_every_step(dataset_dir):
    cfg = PRETRAIN.parse(["--config", "tiny", "--train.grad_accum_steps=2"])
    threads = torch.get_num_threads()
    stamps = bare_loop(cfg.model, cfg.train, dataset_dir, steps=4, threads=1)
    assert len(stamps) == 5 and all(b > a for a, b in zip(stamps, stamps[1:]))
    assert torch.get_num_threads() == threads
    tokens_per_s = steady_tokens_per_s(stamps, tokens_per_step=8 * SEQ_LEN, warmup=1)
    assert tokens_per_s == pytest.approx(3 * 8 * SEQ_LEN / (stamps[4] - stamps[1]))


def test_device_steps_report_throughput_and_mfu():
    # The --gpu measurement, run on the CPU with the tiny recipe: same code but CUDA calls.
    cfg = PRETRAIN.parse(["--config", "tiny", "--train.grad_accum_steps=1"])
    result = train_steps_on_device(cfg.model, cfg.train, cfg.data.seq_len, "cpu", steps=2, warmup=1)
    assert result["tokens_per_s"] > 0 and result["mfu"] > 0
    assert np.isfinite(result["final_loss"])
