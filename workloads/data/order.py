"""The global sample order: which samples form global batch k, and each rank's share.

The order depends on (seed, epoch, sample index) only, never on the number
of workers, so a run resumed on another worker count sees the same batches:
the sample stream is the concatenation over epochs e = 0, 1, ... of
`default_rng([seed, e]).permutation(num_samples)`, and global batch k is
stream positions [k*G, (k+1)*G).
"""

from __future__ import annotations

import functools

import numpy as np

from workloads.errors import UserInputError


def global_batch_indices(num_samples: int, global_batch_size: int, step: int, seed: int) -> np.ndarray:
    """Sample indices of global batch `step` (0-based), (global_batch_size,) int64; may span epochs."""
    if global_batch_size < 1:
        raise UserInputError(f"global batch size {global_batch_size} must be at least 1")
    return stream_indices(num_samples, step * global_batch_size, global_batch_size, seed)


def stream_indices(num_samples: int, start: int, count: int, seed: int) -> np.ndarray:
    """Sample indices at stream positions [start, start+count), (count,) int64; may span epochs.

    Resuming from a checkpoint continues at the position it recorded (samples
    consumed so far), whatever the global batch is now.
    """
    if num_samples < 1:
        raise UserInputError(f"the dataset split holds no samples (num_samples={num_samples})")
    stop = start + count
    parts = []
    position = start
    while position < stop:
        epoch, offset = divmod(position, num_samples)
        take = min(stop - position, num_samples - offset)
        parts.append(epoch_permutation(num_samples, seed, epoch)[offset : offset + take])
        position += take
    return np.concatenate(parts)


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """(num_samples,) int64: the order of samples in one epoch (cached, read-only)."""
    permutation = np.random.default_rng([seed, epoch]).permutation(num_samples)
    permutation.flags.writeable = False
    return permutation


def rank_share(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s contiguous 1/world_size part of a global batch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    if len(indices) % world_size:
        raise UserInputError(
            f"global batch size {len(indices)} is not divisible by the number of data-parallel workers {world_size}"
        )
    share = len(indices) // world_size
    return indices[rank * share : (rank + 1) * share]


def split_micro_batches(indices: np.ndarray, micro_batch_size: int) -> list[np.ndarray]:
    """A rank's share cut into consecutive micro-batches of micro_batch_size indices."""
    if micro_batch_size < 1 or len(indices) % micro_batch_size:
        raise UserInputError(
            f"per-worker batch of {len(indices)} samples is not divisible by micro batch size {micro_batch_size}"
        )
    return list(np.asarray(indices).reshape(-1, micro_batch_size))
