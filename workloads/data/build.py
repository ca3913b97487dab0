"""Building one group of a dataset, inside a Ray Data task: read, split, tokenize, pack, write.

A task reads its group's pieces itself (documents never pass through the
driver), decides each document's split by a hash of its content, encodes,
packs each split's documents into samples, writes the shards straight into the
build directory (shared storage on a cluster) and returns only their metadata.
The metadata is also written next to the shards (`.groups/<index>.json`, after
them), so that a prepare killed mid-way and run again reuses finished groups.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from workloads.data.corpus import read_pieces, split_train_val
from workloads.data.groups import Group
from workloads.data.packing import pack
from workloads.data.shards import SPLITS, write_shards
from workloads.errors import UserInputError
from workloads.tokenizer import Tokenizer, training_sample

GROUPS_DIR = ".groups"


def record_path(build_dir: Path, index: int) -> Path:
    return Path(build_dir) / GROUPS_DIR / f"{index:05d}.json"


def read_finished_group(build_dir: Path, index: int) -> dict | None:
    """The record of a group finished by an earlier attempt, if it and all its shards are there."""
    try:
        record = json.loads(record_path(build_dir, index).read_text())
        for name, size in record["shard_bytes"].items():
            if os.path.getsize(Path(build_dir) / name) != size:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def group_documents(group: Group, text_field: str, max_doc_chars: int) -> tuple[list[str], int, int]:
    """(non-empty documents in order, invalid UTF-8 sequences, empty documents skipped)."""
    field = "data.corpus" if group.split == "train" else "data.val_corpus"
    return read_pieces(group.pieces, text_field, max_doc_chars, field)


def is_val_documents(group: Group, documents: list[str], settings: dict[str, Any]) -> np.ndarray:
    """(D,) bool. The corpus's first group makes sure each split gets a document, as a small corpus needs."""
    if group.split == "val" or settings["separate_val_corpus"]:
        return np.full(len(documents), group.split == "val")
    ensure_both = group.index == 0 and len(documents) >= 2
    return split_train_val(documents, settings["val_fraction"], settings["split_seed"], ensure_both=ensure_both)


def sample_group_row(row: dict[str, Any], budget: int, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map function: at most `budget` characters of a group's train documents, drawn at random
    (seeded) from the whole group and kept in order (`training_sample`)."""
    group = Group.from_json(row["group"])
    try:
        documents, _, _ = group_documents(group, settings["text_field"], settings["max_doc_chars"])
    except UserInputError as e:
        return {"index": group.index, "texts": [], "documents": 0, "error": str(e)}
    is_val = is_val_documents(group, documents, settings)
    texts = training_sample([doc for doc, val in zip(documents, is_val) if not val], budget, seed)
    return {"index": group.index, "texts": texts, "documents": len(documents), "error": ""}


def build_group_row(
    row: dict[str, Any], build_dir: str, model_bytes: bytes, settings: dict[str, Any]
) -> dict[str, Any]:
    """Ray Data map function: build one group; returns {index, record (JSON), seconds, node, error}."""
    # ray: this runs in a Ray worker (its node is reported so the driver can say where work ran); importing the
    # pipeline's modules, as parsing a pretrain config does, needs no Ray.
    import ray

    group = Group.from_json(row["group"])
    node = ray.get_runtime_context().get_node_id()
    started = time.perf_counter()
    try:
        record = build_group(group, Path(build_dir), model_bytes, settings)
    except UserInputError as e:
        return {"index": group.index, "record": "", "seconds": 0.0, "node": node, "error": str(e)}
    seconds = time.perf_counter() - started
    return {"index": group.index, "record": json.dumps(record), "seconds": seconds, "node": node, "error": ""}


def build_group(group: Group, build_dir: Path, model_bytes: bytes, settings: dict[str, Any]) -> dict[str, Any]:
    documents, invalid, empty = group_documents(group, settings["text_field"], settings["max_doc_chars"])
    is_val = is_val_documents(group, documents, settings)
    tokenizer = _worker_tokenizer(model_bytes)
    seq_len = settings["seq_len"]
    splits, shard_bytes = {}, {}
    for split in SPLITS:
        docs = [doc for doc, val in zip(documents, is_val) if val == (split == "val")]
        ids = tokenizer.encode_batch_arrays(docs)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.concatenate(ids) if ids else np.empty(0, dtype=np.int32)
        packed = pack(flat, lengths, tokenizer.eos_id, seq_len)
        shards = write_shards(
            build_dir, split, packed.tokens, packed.segments, settings["shard_samples"], group=group.index
        )
        shard_bytes.update({shard["file"]: os.path.getsize(build_dir / shard["file"]) for shard in shards})
        splits[split] = {
            "num_documents": len(docs),
            "num_tokens": packed.num_tokens,
            "num_bytes": sum(len(doc.encode("utf-8")) for doc in docs),
            "num_samples": packed.num_samples,
            "dropped_tokens": packed.dropped_tokens,
            "shards": shards,
        }
    record = {
        "index": group.index,
        "bytes": group.bytes,
        "invalid_utf8_sequences": invalid,
        "empty_documents_skipped": empty,
        "splits": splits,
        "shard_bytes": shard_bytes,
    }
    _write_atomically(record_path(build_dir, group.index), json.dumps(record))
    return record


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


_loaded_tokenizer: dict[bytes, Tokenizer] = {}


def _worker_tokenizer(model_bytes: bytes) -> Tokenizer:
    # Ray reuses worker processes across tasks: load the model once per process.
    if model_bytes not in _loaded_tokenizer:
        _loaded_tokenizer.clear()
        _loaded_tokenizer[model_bytes] = Tokenizer(model_bytes)
    return _loaded_tokenizer[model_bytes]
