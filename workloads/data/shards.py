"""Writing packed samples as Arrow IPC shard files, and the dataset manifest.

The Arrow IPC *file* format is used, uncompressed, one record batch per
shard, so that workers can memory-map a shard and view its columns as numpy
arrays without copying.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import ipc

from workloads.errors import UserInputError

# Bump when the layout of shards or manifest, or anything that changes the
# prepared tokens for the same inputs, changes: it is part of the dataset hash.
# 2: documents packed within groups fixed by the input (workloads.data.groups), shards named after them.
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
SPLITS = ("train", "val")


def shard_schema(seq_len: int) -> pa.Schema:
    sample = pa.list_(pa.int32(), seq_len + 1)  # fixed_size_list<int32>[seq_len+1]
    return pa.schema([("tokens", sample), ("segments", sample)])


def shard_file_name(split: str, index: int, group: int | None = None) -> str:
    if group is None:
        return f"{split}-{index:05d}.arrow"
    return f"{split}-{group:05d}-{index:03d}.arrow"


def write_shards(
    directory: Path, split: str, tokens: np.ndarray, segments: np.ndarray, shard_samples: int, group: int | None = None
) -> list[dict]:
    """Write (N, seq_len+1) tokens/segments as shards of at most shard_samples rows, named after `group`.

    Each file appears under its name only when complete. Returns the manifest
    entries [{file, num_samples, sha256}] in order.
    """
    num_samples, width = tokens.shape
    schema = shard_schema(width - 1)
    entries = []
    for index, start in enumerate(range(0, num_samples, shard_samples)):
        stop = min(start + shard_samples, num_samples)
        columns = [_fixed_size_lists(tokens[start:stop]), _fixed_size_lists(segments[start:stop])]
        path = directory / shard_file_name(split, index, group)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        with pa.OSFile(str(partial), "wb") as sink, ipc.new_file(sink, schema) as writer:
            writer.write_batch(pa.record_batch(columns, schema=schema))
        os.replace(partial, path)
        entries.append({"file": path.name, "num_samples": stop - start, "sha256": file_sha256(path)})
    return entries


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def check_shard_sha256(path: Path, expected: str) -> str:
    """The shard's sha256 when it equals the manifest's `expected`; one line naming the shard otherwise."""
    try:
        actual = file_sha256(path)
    except OSError as e:
        raise UserInputError(f"{path}: unreadable shard ({e.strerror})") from e
    if actual != expected:
        raise UserInputError(
            f"{path}: sha256 {actual[:12]}... differs from the manifest's {expected[:12]}...; "
            "the shard is corrupted, prepare the dataset again"
        )
    return actual


def _fixed_size_lists(rows: np.ndarray) -> pa.FixedSizeListArray:
    rows = np.ascontiguousarray(rows, dtype=np.int32)  # (n, seq_len+1)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])
