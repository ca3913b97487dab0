"""Prepare a dataset: corpus -> documents -> tokenizer -> tokens (Ray Data) -> packed shards + manifest.

The output directory is `<dataset_root>/<short name>-<hash>`, the hash
covering everything that shapes its content (source file digests, the
config fields that matter, a given tokenizer's digest, the format version).
A finished directory is never rebuilt, and a directory only appears under
its final name once complete.

    python -m orchestrator.prepare [recipe.yaml] [--data.corpus=... ...]
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from orchestrator import ray_runtime
from workloads.data.config import EMBEDDED_CORPUS, DataConfig
from workloads.data.corpus import (
    Corpus,
    SourceDigest,
    SourceFile,
    digest_sources,
    find_sources,
    read_corpus,
    split_train_val,
)
from workloads.data.packing import PackedSplit, pack
from workloads.data.shards import FORMAT_VERSION, MANIFEST_FILE, TOKENIZER_FILE, write_manifest, write_shards
from workloads.errors import UserInputError
from workloads.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

# Data fields that do not change the prepared files: where they go, and the
# training-time order. Corpus paths are covered by their files' digests.
_FIELDS_NOT_HASHED = {"dataset_dir", "shuffle_seed", "corpus", "val_corpus"}
# Characters of text per Ray Data block at most, so big corpora stream in pieces.
_MAX_BLOCK_CHARS = 8_000_000
# Blocks per CPU: small enough blocks for the CPUs to finish together.
_BLOCKS_PER_CPU = 2


def prepare_dataset(data: DataConfig, tokenizer: TokenizerConfig, dataset_root: Path) -> Path:
    """Build the dataset for these configs under dataset_root (unless already there); return its directory."""
    data.validate()
    tokenizer.validate()
    train_sources = find_sources(data.corpus, "data.corpus")
    val_sources = find_sources(data.val_corpus, "data.val_corpus") if data.val_corpus else []
    train_digests = digest_sources(train_sources, "data.corpus")
    val_digests = digest_sources(val_sources, "data.val_corpus")
    given_model = _read_given_model(tokenizer.model_path) if tokenizer.model_path else None
    key = dataset_hash(data, tokenizer, train_digests, val_digests, given_model)
    dataset_root = Path(dataset_root)
    final_dir = dataset_root / f"{short_name(data.corpus)}-{key}"
    if (final_dir / MANIFEST_FILE).is_file():
        print(f"dataset already prepared: {final_dir} (nothing to do)", flush=True)
        return final_dir
    if final_dir.exists():
        raise UserInputError(f"{final_dir} exists but has no {MANIFEST_FILE}; remove it and run again")

    dataset_root.mkdir(parents=True, exist_ok=True)
    build_dir = dataset_root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir()
    try:
        manifest = _build(data, tokenizer, given_model, train_sources, val_sources, build_dir)
        manifest["dataset_hash"] = key
        manifest["sources"] = [_digest_json(d) for d in train_digests]
        manifest["val_sources"] = [_digest_json(d) for d in val_digests]
        write_manifest(build_dir, manifest)  # last: its presence marks the directory complete
        try:
            os.rename(build_dir, final_dir)
        except OSError:
            if not (final_dir / MANIFEST_FILE).is_file():
                raise
            # Another process finished the same dataset first; theirs is identical.
            shutil.rmtree(build_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    print(
        f"prepare: wrote {_plural(len(train['shards']), 'train shard')}, "
        f"{_plural(len(val['shards']), 'val shard')} -> {final_dir}",
        flush=True,
    )
    return final_dir


def dataset_hash(
    data: DataConfig,
    tokenizer: TokenizerConfig,
    train_digests: Sequence[SourceDigest],
    val_digests: Sequence[SourceDigest],
    given_model: bytes | None,
) -> str:
    """16 hex digits identifying the prepared content for these inputs."""
    tokenizer_fields = dataclasses.asdict(tokenizer)
    if given_model is not None:
        # A given model replaces training: its bytes matter, not the training fields.
        tokenizer_fields = {"model_sha256": hashlib.sha256(given_model).hexdigest()}
    identity = {
        "format_version": FORMAT_VERSION,
        "data": {k: v for k, v in dataclasses.asdict(data).items() if k not in _FIELDS_NOT_HASHED},
        "separate_val_corpus": bool(data.val_corpus),
        "tokenizer": tokenizer_fields,
        "sources": [[d.format, d.sha256, d.bytes] for d in train_digests],
        "val_sources": [[d.format, d.sha256, d.bytes] for d in val_digests],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def short_name(corpus: str) -> str:
    """A readable directory-name prefix for a corpus spec."""
    if corpus == EMBEDDED_CORPUS:
        return EMBEDDED_CORPUS
    path = Path(corpus.rstrip("/\\"))
    # For a glob, name it after the deepest directory without wildcards.
    while path.name and any(c in path.name for c in "*?["):
        path = path.parent
    name = path.stem if path.suffix in (".txt", ".jsonl", ".parquet") else path.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return name[:40] or "corpus"


def _build(
    data: DataConfig,
    tokenizer_config: TokenizerConfig,
    given_model: bytes | None,
    train_sources: Sequence[SourceFile],
    val_sources: Sequence[SourceFile],
    build_dir: Path,
) -> dict:
    """Write tokenizer and shards into build_dir; return the manifest but for its identity fields."""
    train_docs, val_docs, invalid, empty = _read_and_split(data, train_sources, val_sources)
    model_bytes = _tokenizer_model(tokenizer_config, given_model, train_docs, data.split_seed)
    (build_dir / TOKENIZER_FILE).write_bytes(model_bytes)
    tokenizer = Tokenizer(model_bytes)

    ray_runtime.connect()  # the cluster this runs in (`ray job submit`), else a private local Ray
    started = time.perf_counter()
    flat_tokens, doc_lengths = tokenize_documents(train_docs + val_docs, model_bytes)
    seconds = time.perf_counter() - started
    print(
        f"prepare: tokenized {_count(len(flat_tokens))} tokens in {seconds:.1f} s "
        f"({_count(len(flat_tokens) / seconds)} tok/s)",
        flush=True,
    )

    # Documents are in train-then-val order: cut the flat tokens at the split.
    num_train_tokens = int(doc_lengths[: len(train_docs)].sum())
    splits = {}
    for split, docs, tokens, lengths in (
        ("train", train_docs, flat_tokens[:num_train_tokens], doc_lengths[: len(train_docs)]),
        ("val", val_docs, flat_tokens[num_train_tokens:], doc_lengths[len(train_docs) :]),
    ):
        packed = pack(tokens, lengths, tokenizer.eos_id, data.seq_len)
        if packed.num_samples == 0:
            raise UserInputError(
                f"data.seq_len: {data.seq_len} needs {data.seq_len + 1} tokens per sample but the {split} split "
                f"holds only {packed.num_tokens}; use a bigger corpus, a larger data.val_fraction or a smaller seq_len"
            )
        shards = write_shards(build_dir, split, packed.tokens, packed.segments, data.shard_samples)
        splits[split] = _split_entry(docs, packed, shards)

    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        },
        "seq_len": data.seq_len,
        "splits": splits,
        "invalid_utf8_sequences": invalid,
        "empty_documents_skipped": empty,
        "config": {"data": dataclasses.asdict(data), "tokenizer": dataclasses.asdict(tokenizer_config)},
    }


def _read_and_split(
    data: DataConfig, train_sources: Sequence[SourceFile], val_sources: Sequence[SourceFile]
) -> tuple[list[str], list[str], int, int]:
    """(train documents, val documents, invalid UTF-8 sequences, empty documents skipped)."""
    corpus = _read(data.corpus, train_sources, data, "data.corpus")
    if val_sources:
        val_corpus = _read(data.val_corpus, val_sources, data, "data.val_corpus")
        train_docs, val_docs = corpus.documents, val_corpus.documents
        invalid = corpus.invalid_utf8_sequences + val_corpus.invalid_utf8_sequences
        empty = corpus.empty_documents_skipped + val_corpus.empty_documents_skipped
    else:
        is_val = split_train_val(corpus.documents, data.val_fraction, data.split_seed)
        train_docs = [doc for doc, v in zip(corpus.documents, is_val) if not v]
        val_docs = [doc for doc, v in zip(corpus.documents, is_val) if v]
        invalid, empty = corpus.invalid_utf8_sequences, corpus.empty_documents_skipped
    print(f"prepare: split {len(train_docs)} train / {len(val_docs)} val documents", flush=True)
    return train_docs, val_docs, invalid, empty


def _tokenizer_model(
    config: TokenizerConfig, given_model: bytes | None, train_docs: Sequence[str], seed: int
) -> bytes:
    """The given model (checked to be exact) or one trained on the train documents."""
    if given_model is not None:
        try:
            Tokenizer(given_model).check_exact()
        except UserInputError as e:
            raise UserInputError(f"tokenizer.model_path: {config.model_path}: {e}") from e
        print(f"prepare: using tokenizer {config.model_path}", flush=True)
        return given_model
    started = time.perf_counter()
    model_bytes = train_tokenizer(train_docs, config, seed=seed)
    print(f"prepare: tokenizer trained in {time.perf_counter() - started:.1f} s", flush=True)
    return model_bytes


def tokenize_documents(documents: Sequence[str], model_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Encode documents in parallel with Ray Data: (flat tokens (T,) int32, lengths (D,) int64), in input order."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    blocks = _document_blocks(documents, cpus)
    # Plain tasks, not an actor pool: starting actors cost more than the whole
    # encoding of a 12 MB corpus; each worker process keeps its tokenizer.
    dataset = ray.data.from_arrow(blocks).map_batches(
        encode_documents,
        fn_kwargs={"model_bytes": model_bytes},
        batch_size=None,  # a whole block per call: few, large sentencepiece calls
        batch_format="pyarrow",
        num_cpus=1,
    )
    # One stage only: Ray Data's default holds back half the CPUs for other
    # stages, which would leave half of them idle here.
    dataset.context.op_resource_reservation_enabled = False
    tables = [table for table in ray.get(dataset.to_arrow_refs()) if table.num_rows]
    # Blocks may come back in any order; put them back in document order.
    tables.sort(key=lambda table: table.column("doc")[0].as_py())
    encoded = pa.concat_tables(tables).combine_chunks()
    doc_order = encoded.column("doc").to_numpy()
    if not np.array_equal(doc_order, np.arange(len(documents))):
        raise RuntimeError("tokenization lost or reordered documents")
    token_lists = encoded.column("tokens").chunk(0)
    flat_tokens = token_lists.flatten().to_numpy()  # (T,) int32
    doc_lengths = pc.list_value_length(token_lists).to_numpy().astype(np.int64)  # (D,)
    return flat_tokens, doc_lengths


def encode_documents(batch: pa.Table, model_bytes: bytes) -> pa.Table:
    """Ray Data map_batches function: {doc, text} rows -> {doc, tokens} rows."""
    ids = _worker_tokenizer(model_bytes).encode_batch_arrays(batch.column("text").to_pylist())
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)])  # (D+1,)
    flat = np.concatenate(ids) if ids else np.empty(0, dtype=np.int32)
    tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))
    return pa.table({"doc": batch.column("doc"), "tokens": tokens})


_loaded_tokenizer: dict[bytes, Tokenizer] = {}


def _worker_tokenizer(model_bytes: bytes) -> Tokenizer:
    # Ray reuses worker processes across tasks: load the model once per process.
    if model_bytes not in _loaded_tokenizer:
        _loaded_tokenizer.clear()
        _loaded_tokenizer[model_bytes] = Tokenizer(model_bytes)
    return _loaded_tokenizer[model_bytes]


def _document_blocks(documents: Sequence[str], cpus: int) -> list[pa.Table]:
    """Contiguous runs of documents with about equal characters, as {doc, text} tables."""
    lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    total = int(lengths.sum())
    num_blocks = max(cpus * _BLOCKS_PER_CPU, math.ceil(total / _MAX_BLOCK_CHARS))
    num_blocks = min(num_blocks, len(documents))
    # Cut where the running character count crosses each 1/num_blocks of the total.
    cuts = np.searchsorted(np.cumsum(lengths), np.arange(1, num_blocks) * total / num_blocks)
    bounds = np.unique(np.concatenate([[0], cuts, [len(documents)]]))
    return [
        pa.table(
            {
                "doc": pa.array(np.arange(start, stop, dtype=np.int64)),
                "text": pa.array(documents[start:stop], type=pa.large_string()),
            }
        )
        for start, stop in itertools.pairwise(bounds)
    ]


def _read(spec: str, sources, data: DataConfig, field: str) -> Corpus:
    corpus = read_corpus(sources, data.text_field, data.max_doc_chars, field)
    print(
        f"prepare: read {len(corpus.documents)} documents ({corpus.num_bytes / 1e6:.1f} MB) from {spec}"
        + (f", {corpus.invalid_utf8_sequences} invalid UTF-8 sequences replaced" if corpus.invalid_utf8_sequences else ""),
        flush=True,
    )
    return corpus


def _split_entry(documents: Sequence[str], packed: PackedSplit, shards: list[dict]) -> dict:
    return {
        "num_documents": len(documents),
        "num_tokens": packed.num_tokens,
        "num_bytes": sum(len(doc.encode("utf-8")) for doc in documents),
        "num_samples": packed.num_samples,
        "dropped_tokens": packed.dropped_tokens,
        "shards": shards,
    }


def _read_given_model(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserInputError(f"tokenizer.model_path: cannot read {path} ({e.strerror})") from e


def _digest_json(digest: SourceDigest) -> dict:
    return {"path": digest.path, "sha256": digest.sha256, "bytes": digest.bytes}


def _count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here so that importing this module does not pull in the CLI
    # layer; prepare takes the same recipes and overrides as pretrain.
    from orchestrator.pretrain import parse_cli

    try:
        cfg = parse_cli(argv, prog="orchestrator.prepare")
        root = Path(cfg.data.dataset_dir or Path(cfg.run.output_dir) / "datasets")
        prepare_dataset(cfg.data, cfg.tokenizer, root)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
