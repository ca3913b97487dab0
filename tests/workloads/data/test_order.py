"""The global sample order: every sample once per epoch, independent of the worker count."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.data.order import epoch_permutation, global_batch_indices, rank_share, split_micro_batches
from workloads.errors import UserInputError


@pytest.mark.parametrize("num_samples,batch", [(10, 5), (10, 3), (7, 7), (5, 8)])
def test_every_sample_appears_once_per_epoch(num_samples, batch):
    epochs = 3
    steps = epochs * num_samples // batch
    stream = np.concatenate([global_batch_indices(num_samples, batch, k, seed=11) for k in range(steps)])
    for e in range(epochs):
        epoch = stream[e * num_samples : (e + 1) * num_samples]
        if len(epoch) == num_samples:
            assert sorted(epoch.tolist()) == list(range(num_samples))
    # The stream is the concatenation of the seeded epoch permutations.
    expected = np.concatenate([np.random.default_rng([11, e]).permutation(num_samples) for e in range(epochs + 1)])
    np.testing.assert_array_equal(stream, expected[: len(stream)])


def test_epochs_and_seeds_are_shuffled_differently():
    assert not np.array_equal(epoch_permutation(100, 0, 0), epoch_permutation(100, 0, 1))
    assert not np.array_equal(global_batch_indices(100, 10, 0, seed=0), global_batch_indices(100, 10, 0, seed=1))


def test_global_batch_does_not_depend_on_world_size():
    for step in (0, 1, 7, 12):  # 12 * 24 crosses the epoch boundary of 100 samples
        batch = global_batch_indices(100, 24, step, seed=3)
        for world in (1, 2, 4):
            shares = [rank_share(batch, rank, world) for rank in range(world)]
            assert all(len(share) == 24 // world for share in shares)
            np.testing.assert_array_equal(np.concatenate(shares), batch)


def test_indivisible_batch_is_a_user_error():
    batch = global_batch_indices(100, 10, 0, seed=0)
    with pytest.raises(UserInputError, match="10 is not divisible by .* 4"):
        rank_share(batch, 0, 4)
    with pytest.raises(UserInputError, match="not divisible by micro batch size 3"):
        split_micro_batches(batch, 3)


def test_micro_batches_cover_the_share_in_order():
    share = np.arange(10, 22)
    micro = split_micro_batches(share, 4)
    assert [m.tolist() for m in micro] == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21]]
