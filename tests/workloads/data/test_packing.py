"""Packing documents into samples."""

from __future__ import annotations

import numpy as np

from workloads.data.packing import pack


def test_packing_overlaps_samples_by_one_token():
    # Documents [5 6] [] [7 8 9 10] with EOS=1: stream 5 6 1 | 1 | 7 8 9 10 1
    packed = pack(np.array([5, 6, 7, 8, 9, 10], np.int32), np.array([2, 0, 4]), eos_id=1, seq_len=3)
    assert packed.tokens.tolist() == [[5, 6, 1, 1], [1, 7, 8, 9]]
    assert packed.segments.tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]
    assert (packed.num_tokens, packed.dropped_tokens) == (9, 2)
    assert pack(np.array([5], np.int32), np.array([1]), 1, 3).num_samples == 0
