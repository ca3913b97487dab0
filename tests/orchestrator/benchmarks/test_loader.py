"""The loader section's measurements on a small dataset."""

from __future__ import annotations

import pytest

from orchestrator.benchmarks.loader import measure_loader, measure_memcpy
from tests.helpers import write_random_dataset

SEQ_LEN = 16
VOCAB = 512  # the tiny recipe's


@pytest.fixture
def dataset_dir(tmp_path):
    return write_random_dataset(tmp_path, SEQ_LEN, VOCAB)


def test_loader_and_memcpy_measurements(dataset_dir):
    loader = measure_loader(dataset_dir, micro_batch_size=4, seconds=0.05, micro_batches=30)
    assert loader["bytes_per_micro_batch"] == 2 * 4 * (SEQ_LEN + 1) * 4  # tokens and segments, int32
    assert loader["bytes_per_pass"] == 30 * loader["bytes_per_micro_batch"]
    assert loader["micro_batches_per_s"] > 0
    assert loader["bytes_per_s"] == pytest.approx(loader["micro_batches_per_s"] * loader["bytes_per_micro_batch"])
    assert measure_memcpy(loader["bytes_per_pass"], seconds=0.01) > 0
