"""Reading a prepared dataset inside training workers, memory-mapped and without copies.

Each shard's fixed_size_list columns are viewed as (rows, seq_len+1) int32
numpy arrays straight over the mapped file; `get` gathers the requested rows
(only those pages are read) into int32 torch tensors, the width they are stored
in: half the bytes of int64 to copy here and to move to a device. The model takes
int32 ids as they are (embedding lookups, segment comparisons) and widens the
targets where cross-entropy needs int64 (`workloads.model.lm_loss`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pyarrow import ipc

from workloads.data.shards import FORMAT_VERSION, MANIFEST_FILE, check_shard_sha256, shard_schema
from workloads.errors import UserInputError


def load_manifest(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise UserInputError(f"{dataset_dir}: no {MANIFEST_FILE}; not a prepared dataset") from e
    except (OSError, ValueError) as e:
        raise UserInputError(f"{path}: unreadable manifest ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserInputError(
            f"{path}: format_version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}; "
            "prepare the dataset again"
        )
    return manifest


class PackedDataset:
    """The samples of one split ("train" or "val") of a prepared dataset.

    `get(indices)` returns (tokens, segments) as int32 torch tensors of shape
    (len(indices), seq_len+1). Pickling reopens the files on the other side,
    so a dataset can be handed to Ray workers.
    """

    def __init__(self, dataset_dir: str | Path, split: str):
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self.manifest = load_manifest(self.dataset_dir)
        if split not in self.manifest["splits"]:
            raise UserInputError(f"{self.dataset_dir}: no split {split!r} (has {sorted(self.manifest['splits'])})")
        self.seq_len: int = self.manifest["seq_len"]
        self._shards = self.manifest["splits"][split]["shards"]
        # One (tokens, segments) pair of (rows, seq_len+1) int32 views per record batch.
        self._token_views: list[np.ndarray] = []
        self._segment_views: list[np.ndarray] = []
        for shard in self._shards:
            tokens, segments = _map_shard(self.dataset_dir / shard["file"], self.seq_len, shard["num_samples"])
            self._token_views += tokens
            self._segment_views += segments
        counts = [len(view) for view in self._token_views]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (num_views+1,)
        self._view_starts = self._starts.tolist()

    def __reduce__(self):
        return (PackedDataset, (str(self.dataset_dir), self.split))

    @property
    def num_samples(self) -> int:
        return int(self._starts[-1])

    def __len__(self) -> int:
        return self.num_samples

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples at `indices` (b,), in that order: tokens and segments, each (b, seq_len+1) int32.

        One gather (`take`) per column when the samples all lie in one view; otherwise
        row by row, since a shuffled micro-batch touches about as many views as it has
        samples (a view per shard file) and a row copy costs less than a gather per view.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
        # Each sample's view, -1 below the range and num_views above it; plain ints from here.
        views = (self._starts.searchsorted(indices, side="right") - 1).tolist()
        low, high = (min(views), max(views)) if views else (0, 0)
        if low < 0 or high >= len(self._token_views):
            raise IndexError(f"sample index out of range [0, {self.num_samples}) in {self.split}")
        if views and low == high:
            local = indices - self._starts[low]
            tokens, segments = self._token_views[low].take(local, 0), self._segment_views[low].take(local, 0)
            return torch.from_numpy(tokens), torch.from_numpy(segments)
        tokens = np.empty((len(indices), self.seq_len + 1), dtype=np.int32)
        segments = np.empty_like(tokens)
        for row, (view, index) in enumerate(zip(views, indices.tolist())):
            sample = index - self._view_starts[view]
            tokens[row] = self._token_views[view][sample]
            segments[row] = self._segment_views[view][sample]
        return torch.from_numpy(tokens), torch.from_numpy(segments)

    def verify_checksums(self) -> None:
        """Recompute every shard's sha256; raise UserInputError naming the first that differs."""
        for shard in self._shards:
            check_shard_sha256(self.dataset_dir / shard["file"], shard["sha256"])


def _map_shard(path: Path, seq_len: int, num_samples: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Memory-map one shard; return per-batch (rows, seq_len+1) views of tokens and segments."""
    try:
        reader = ipc.open_file(pa.memory_map(str(path), "r"))
        if not reader.schema.equals(shard_schema(seq_len)):
            raise UserInputError(
                f"{path}: unexpected columns {reader.schema.names} / types; not a shard of this dataset"
            )
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        for batch in batches:
            batch.validate()  # buffer sizes agree with the lengths, so views cannot overrun
        views = (
            [_rows_view(batch.column(0), seq_len) for batch in batches],
            [_rows_view(batch.column(1), seq_len) for batch in batches],
        )
    except (OSError, pa.ArrowException) as e:
        raise UserInputError(f"{path}: unreadable Arrow shard ({_first_line(e)})") from e
    rows = sum(batch.num_rows for batch in batches)
    if rows != num_samples:
        raise UserInputError(f"{path}: holds {rows} samples, the manifest says {num_samples}")
    return views


def _rows_view(column: pa.FixedSizeListArray, seq_len: int) -> np.ndarray:
    # .values ignores the column's own offset; slice rows after reshaping.
    flat = column.values.to_numpy(zero_copy_only=True)  # (rows_in_buffer * (seq_len+1),) int32
    return flat.reshape(-1, seq_len + 1)[column.offset : column.offset + len(column)]


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
