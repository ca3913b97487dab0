"""Reading shards back (memory-mapped, checked)."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch

from workloads.data.loader import PackedDataset, load_manifest
from workloads.data.order import global_batch_indices
from workloads.data.shards import FORMAT_VERSION, write_manifest, write_shards
from workloads.errors import UserInputError

SEQ_LEN = 16


def write_dataset(directory, num_train=50, num_val=7, shard_samples=16):
    """A dataset of known random samples, written the way prepare writes them."""
    rng = np.random.default_rng(0)
    samples = {}
    splits = {}
    for split, count in (("train", num_train), ("val", num_val)):
        tokens = rng.integers(0, 1000, size=(count, SEQ_LEN + 1), dtype=np.int32)
        segments = np.sort(rng.integers(0, 3, size=(count, SEQ_LEN + 1), dtype=np.int32), axis=1)
        shards = write_shards(directory, split, tokens, segments, shard_samples)
        splits[split] = {"num_samples": count, "shards": shards}
        samples[split] = (tokens, segments)
    write_manifest(directory, {"format_version": FORMAT_VERSION, "seq_len": SEQ_LEN, "splits": splits})
    return samples


@pytest.fixture
def dataset_dir(tmp_path):
    samples = write_dataset(tmp_path)
    return tmp_path, samples


def test_get_returns_what_was_written(dataset_dir):
    directory, samples = dataset_dir
    train = PackedDataset(directory, "train")
    assert (train.num_samples, train.seq_len, len(train._shards)) == (50, SEQ_LEN, 4)  # 16+16+16+2
    indices = np.array([49, 0, 17, 16, 15, 33, 17])  # across all shards, unordered, repeated
    tokens, segments = train.get(indices)
    # The stored width: the loss widens the targets where cross-entropy needs int64.
    assert tokens.dtype == segments.dtype == torch.int32
    assert tokens.shape == segments.shape == (7, SEQ_LEN + 1)
    np.testing.assert_array_equal(tokens.numpy(), samples["train"][0][indices])
    np.testing.assert_array_equal(segments.numpy(), samples["train"][1][indices])
    val_tokens, _ = PackedDataset(directory, "val").get(np.arange(7))
    np.testing.assert_array_equal(val_tokens.numpy(), samples["val"][0])


@pytest.mark.parametrize(
    "indices",
    [
        [5, 3, 9, 3],  # one shard
        [15, 16],  # two shards, ascending
        [33, 2, 49, 17, 48, 0, 32, 31],  # every shard, shuffled
        [49, 48, 47, 16, 15, 14, 1, 0],  # descending
        [7] * 5,  # one sample again and again
    ],
)
def test_rows_come_back_in_the_order_asked(dataset_dir, indices):
    directory, samples = dataset_dir
    tokens, segments = PackedDataset(directory, "train").get(np.array(indices))
    assert tokens.is_contiguous() and segments.is_contiguous()
    np.testing.assert_array_equal(tokens.numpy(), samples["train"][0][indices])
    np.testing.assert_array_equal(segments.numpy(), samples["train"][1][indices])


def test_a_shuffled_stream_reads_the_stored_samples_in_stream_order(dataset_dir):
    directory, samples = dataset_dir
    train = PackedDataset(directory, "train")
    for step in range(12):  # 12 * 8 samples cross the epoch boundary of 50
        indices = global_batch_indices(train.num_samples, 8, step, seed=4)
        tokens, segments = train.get(indices)
        np.testing.assert_array_equal(tokens.numpy(), samples["train"][0][indices])
        np.testing.assert_array_equal(segments.numpy(), samples["train"][1][indices])


def test_no_indices_give_empty_batches(dataset_dir):
    tokens, segments = PackedDataset(dataset_dir[0], "train").get(np.array([], dtype=np.int64))
    assert tokens.shape == segments.shape == (0, SEQ_LEN + 1) and tokens.dtype == torch.int32


def test_shards_are_mapped_not_copied(tmp_path):
    write_dataset(tmp_path, num_train=5000, num_val=10, shard_samples=2500)
    before = pa.total_allocated_bytes()
    train = PackedDataset(tmp_path, "train")
    assert pa.total_allocated_bytes() - before < 10_000  # the 2 x 340 KB of samples stay in the files
    assert not train._token_views[0].flags.owndata


@pytest.mark.parametrize("indices", [[50], [3, 50], [-1], [3, -1, 20]])
def test_out_of_range_index_is_refused(dataset_dir, indices):
    train = PackedDataset(dataset_dir[0], "train")
    with pytest.raises(IndexError, match=r"out of range \[0, 50\)"):
        train.get(np.array(indices))


def test_pickled_dataset_reopens_the_files(dataset_dir):
    directory, samples = dataset_dir
    copy = pickle.loads(pickle.dumps(PackedDataset(directory, "train")))
    np.testing.assert_array_equal(copy.get(np.array([3]))[0].numpy(), samples["train"][0][[3]])


def test_verify_checksums_passes_on_intact_shards(dataset_dir):
    PackedDataset(dataset_dir[0], "train").verify_checksums()


def test_corrupted_shard_is_named_by_verify_checksums(dataset_dir):
    directory, _ = dataset_dir
    train = PackedDataset(directory, "train")
    shard = directory / "train-00002.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the token values
    shard.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=r"train-00002\.arrow: sha256 .* differs"):
        train.verify_checksums()


def test_truncated_shard_is_named_on_open(dataset_dir):
    directory, _ = dataset_dir
    shard = directory / "train-00001.arrow"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(UserInputError, match=r"train-00001\.arrow: unreadable Arrow shard"):
        PackedDataset(directory, "train")


def test_shard_with_broken_footer_is_named_on_open(dataset_dir):
    directory, _ = dataset_dir
    shard = directory / "val-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[-10:] = b"\x00" * 10  # footer length and magic
    shard.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=r"val-00000\.arrow: unreadable Arrow shard"):
        PackedDataset(directory, "val")


def test_missing_shard_is_named_on_open(dataset_dir):
    directory, _ = dataset_dir
    (directory / "val-00000.arrow").unlink()
    with pytest.raises(UserInputError, match=r"val-00000\.arrow"):
        PackedDataset(directory, "val")


def test_missing_manifest_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="no manifest.json"):
        load_manifest(tmp_path)
