"""Packing tokenized documents into fixed-length samples that remember document boundaries.

A split's documents, each followed by EOS, form one token stream. Sample i is
stream[i*seq_len : i*seq_len + seq_len + 1]: inputs are its first seq_len
tokens and targets its last seq_len, so consecutive samples share one token
and every token after the first is a target exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass
class PackedSplit:
    tokens: np.ndarray  # (num_samples, seq_len+1) int32
    segments: np.ndarray  # (num_samples, seq_len+1) int32: document index relative to the sample's first
    num_tokens: int  # stream length: all document tokens plus one EOS per document
    dropped_tokens: int  # tail of the stream too short for another sample

    @property
    def num_samples(self) -> int:
        return len(self.tokens)


def token_stream(flat_tokens: np.ndarray, doc_lengths: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents joined with an EOS after each: (stream, doc_ids), both (L,) int32.

    flat_tokens (T,) holds the documents' tokens back to back, doc_lengths (D,)
    their lengths; L = T + D. The EOS token belongs to the document it ends.
    """
    doc_lengths = np.asarray(doc_lengths, dtype=np.int64)
    if int(doc_lengths.sum()) != len(flat_tokens):
        raise ValueError(f"doc_lengths sum to {int(doc_lengths.sum())} but there are {len(flat_tokens)} tokens")
    lengths_with_eos = doc_lengths + 1
    stream_length = int(lengths_with_eos.sum())
    eos_positions = np.cumsum(lengths_with_eos) - 1  # (D,)
    is_eos = np.zeros(stream_length, dtype=bool)
    is_eos[eos_positions] = True
    stream = np.empty(stream_length, dtype=np.int32)
    stream[is_eos] = eos_id
    stream[~is_eos] = flat_tokens
    doc_ids = np.repeat(np.arange(len(doc_lengths), dtype=np.int32), lengths_with_eos)
    return stream, doc_ids


def pack(flat_tokens: np.ndarray, doc_lengths: np.ndarray, eos_id: int, seq_len: int) -> PackedSplit:
    """Cut the split's token stream into (seq_len+1)-token samples overlapping by one token."""
    stream, doc_ids = token_stream(flat_tokens, doc_lengths, eos_id)
    num_samples = max(0, (len(stream) - 1) // seq_len)
    if num_samples == 0:
        empty = np.empty((0, seq_len + 1), dtype=np.int32)
        return PackedSplit(empty, empty.copy(), len(stream), len(stream))
    # Windows of seq_len+1 starting every seq_len tokens: views first, one copy each.
    tokens = np.ascontiguousarray(sliding_window_view(stream, seq_len + 1)[::seq_len][:num_samples])
    doc_windows = sliding_window_view(doc_ids, seq_len + 1)[::seq_len][:num_samples]  # (N, seq_len+1)
    segments = np.ascontiguousarray(doc_windows - doc_windows[:, :1])
    covered = num_samples * seq_len + 1
    return PackedSplit(tokens, segments, len(stream), len(stream) - covered)
