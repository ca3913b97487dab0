"""Prepare a dataset: corpus -> groups -> tokenizer -> shards written by Ray Data tasks -> manifest.

The output directory is `<dataset_root>/<short name>-<hash>`, the hash
covering everything that shapes its content (source file digests, the
config fields that matter, a given tokenizer's digest, the group size, the
format version). A finished directory is never rebuilt, and a directory only
appears under its final name once complete (`workloads.storage.publish`).

The driver only lists and stats files. The corpus is cut into groups fixed by
the input (workloads.data.groups); Ray Data tasks across the cluster read each
group, split its documents by a hash of their content, tokenize, pack and write
its shards, and return only their metadata, from which the driver writes the
manifest. The tokenizer is trained (in a task too) on a bounded sample drawn
evenly from the groups. A prepare that is killed leaves `.tmp-<hash>` behind; run
again, it reuses the tokenizer and every group finished there.

Its command is `python -m orchestrator.prepare`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.data.source_digests import digest_sources_cached
from orchestrator.launch import ray_runtime
from workloads.data.build import GROUPS_DIR, build_group_row, read_finished_group, sample_group_row
from workloads.data.config import EMBEDDED_CORPUS, DataConfig
from workloads.data.corpus import SourceDigest, SourceFile, check_document_count, find_sources
from workloads.data.groups import Group, auto_group_bytes, plan_groups
from workloads.data.shards import FORMAT_VERSION, MANIFEST_FILE, SPLITS, TOKENIZER_FILE, write_manifest
from workloads.errors import UserInputError
from workloads.storage.publish import Published, publish_once
from workloads.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

if TYPE_CHECKING:  # the annotation only: Ray is imported when a dataset is built
    import ray.data

# Data fields that do not change the prepared files: where they go, and the
# training-time order. Corpus paths are covered by their files' digests.
_FIELDS_NOT_HASHED = {"dataset_dir", "shuffle_seed", "corpus", "val_corpus"}
PROGRESS_EVERY_S = 2.0  # at most one progress line this often (and one for the last group)


def prepare_dataset(
    data: DataConfig,
    tokenizer: TokenizerConfig,
    dataset_root: Path,
    group_bytes: int | None = None,
    refresh_digests: bool = False,
) -> Path:
    """Build the dataset for these configs under dataset_root (unless already there); return its directory.

    group_bytes: the size of the groups the corpus is cut into (default: a function
    of the corpus size, see workloads.data.groups). refresh_digests: read every source
    again instead of trusting the digests recorded for unchanged files.
    """
    data.validate()
    tokenizer.validate()
    train_sources = find_sources(data.corpus, "data.corpus")
    val_sources = find_sources(data.val_corpus, "data.val_corpus") if data.val_corpus else []
    dataset_root = Path(dataset_root)
    train_digests = digest_sources_cached(train_sources, "data.corpus", dataset_root, refresh=refresh_digests)
    val_digests = digest_sources_cached(val_sources, "data.val_corpus", dataset_root, refresh=refresh_digests)
    given_model = _read_given_model(tokenizer.model_path) if tokenizer.model_path else None
    if group_bytes is None:
        group_bytes = auto_group_bytes(sum(d.bytes for d in train_digests + val_digests))
    key = dataset_hash(data, tokenizer, train_digests, val_digests, given_model, group_bytes)
    final_dir = dataset_root / f"{short_name(data.corpus)}-{key}"
    built: dict[str, Any] = {}

    def build(build_dir: Path) -> None:
        _remove_partial_files(build_dir)
        groups = plan_groups(train_sources, [d.bytes for d in train_digests], group_bytes, "train", 0, "data.corpus")
        groups += plan_groups(
            val_sources, [d.bytes for d in val_digests], group_bytes, "val", len(groups), "data.val_corpus"
        )
        manifest = _build(data, tokenizer, given_model, groups, train_sources, val_sources, build_dir)
        manifest.update(
            dataset_hash=key,
            group_bytes=group_bytes,
            sources=[_digest_json(d) for d in train_digests],
            val_sources=[_digest_json(d) for d in val_digests],
        )
        shutil.rmtree(build_dir / GROUPS_DIR, ignore_errors=True)
        write_manifest(build_dir, manifest)  # last: its presence marks the directory complete
        built["manifest"] = manifest

    def waiting() -> None:
        print(f"prepare: waiting for another prepare of the same dataset ({final_dir.name})", flush=True)

    outcome = publish_once(
        final_dir,
        build,
        complete=lambda d: (d / MANIFEST_FILE).is_file(),
        resume_in=dataset_root / f".tmp-{key}",
        on_wait=waiting,
    )
    if outcome is Published.FOUND:
        print(f"dataset already prepared: {final_dir} (nothing to do)", flush=True)
        return final_dir
    if outcome is Published.BUILT_ELSEWHERE:
        print(f"dataset prepared by another process: {final_dir}", flush=True)
        return final_dir
    manifest = built["manifest"]
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
    group_bytes: int,
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
        "group_bytes": group_bytes,
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


def _remove_partial_files(build_dir: Path) -> None:
    """Files a killed attempt was still writing (complete ones are already under their names)."""
    for partial in [*build_dir.glob(".*.part"), *build_dir.glob(f"{GROUPS_DIR}/.*.part")]:
        partial.unlink(missing_ok=True)


def _build(
    data: DataConfig,
    tokenizer_config: TokenizerConfig,
    given_model: bytes | None,
    groups: list[Group],
    train_sources: Sequence[SourceFile],
    val_sources: Sequence[SourceFile],
    build_dir: Path,
) -> dict:
    """Write tokenizer and shards into build_dir; return the manifest but for its identity fields."""
    total_bytes = sum(group.bytes for group in groups)
    print(
        f"prepare: {_plural(len(train_sources) + len(val_sources), 'source file')}, {total_bytes / 1e6:.1f} MB "
        f"in {_plural(len(groups), 'group')}",
        flush=True,
    )
    finished = {g.index: r for g in groups if (r := read_finished_group(build_dir, g.index)) is not None}
    ray_runtime.connect()  # the cluster this runs in (`ray job submit`), else a private local Ray
    settings = {
        "seq_len": data.seq_len,
        "shard_samples": data.shard_samples,
        "val_fraction": data.val_fraction,
        "split_seed": data.split_seed,
        "text_field": data.text_field,
        "max_doc_chars": data.max_doc_chars,
        "separate_val_corpus": bool(val_sources),
    }
    model_path = build_dir / TOKENIZER_FILE
    if model_path.is_file():
        model_bytes = model_path.read_bytes()
        print(f"prepare: resuming an earlier attempt: its tokenizer and {len(finished)} finished groups", flush=True)
    else:
        finished = {}  # groups without their tokenizer cannot be trusted
        model_bytes = _tokenizer_model(
            tokenizer_config,
            given_model,
            [g for g in groups if g.split == "train"],
            settings,
            data.split_seed,
            train_sources,
        )
        partial = build_dir / f".{TOKENIZER_FILE}.part"
        partial.write_bytes(model_bytes)
        os.replace(partial, model_path)
    tokenizer = Tokenizer(model_bytes)

    records = dict(finished)
    records.update(_build_groups([g for g in groups if g.index not in finished], build_dir, model_bytes, settings))
    ordered = [records[g.index] for g in groups]
    splits = {split: _split_entry([r["splits"][split] for r in ordered]) for split in SPLITS}
    if not val_sources:
        check_document_count(splits["train"]["num_documents"] + splits["val"]["num_documents"], train_sources, need=2)
    else:
        check_document_count(splits["train"]["num_documents"], train_sources)
    for split in SPLITS:
        entry = splits[split]
        if entry["num_samples"] == 0:
            spread = "" if entry["num_tokens"] < data.seq_len + 1 else f", spread over {len(groups)} groups"
            raise UserInputError(
                f"data.seq_len: {data.seq_len} needs {data.seq_len + 1} tokens per sample but the {split} split "
                f"holds only {entry['num_tokens']}{spread}; use a bigger corpus, a larger data.val_fraction "
                "or a smaller seq_len"
            )
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        },
        "seq_len": data.seq_len,
        "groups": len(groups),
        "splits": splits,
        "invalid_utf8_sequences": sum(r["invalid_utf8_sequences"] for r in ordered),
        "empty_documents_skipped": sum(r["empty_documents_skipped"] for r in ordered),
        "config": {"data": dataclasses.asdict(data), "tokenizer": dataclasses.asdict(tokenizer_config)},
    }


def _tokenizer_model(
    config: TokenizerConfig,
    given_model: bytes | None,
    train_groups: list[Group],
    settings: dict,
    seed: int,
    sources: Sequence[SourceFile],
) -> bytes:
    """The given model (checked to be exact), or one trained on a bounded sample of the train groups."""
    if given_model is not None:
        try:
            Tokenizer(given_model).check_exact()
        except UserInputError as e:
            raise UserInputError(f"tokenizer.model_path: {config.model_path}: {e}") from e
        print(f"prepare: using tokenizer {config.model_path}", flush=True)
        return given_model
    import ray  # ray: imported when a dataset is built; parsing a pretrain config (the GPU check) needs no Ray

    started = time.perf_counter()
    # An equal share of the budget per group, drawn from each group's train documents:
    # the same sample whatever the parallelism, spread over the whole corpus (a corpus of
    # one group gets the sample `train_tokenizer` would draw from all its documents).
    budget = max(1, config.train_max_chars // len(train_groups))
    sample = _map_groups(train_groups, sample_group_row, budget=budget, seed=seed, settings=settings)
    # The sample stays in the object store: the task that trains reads it, the driver never does.
    try:
        model_bytes, chars, documents = ray.get(
            ray.remote(num_cpus=1)(_train_tokenizer_task).remote(sample.to_arrow_refs(), config, seed)
        )
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, UserInputError):
            raise UserInputError(str(e.cause)) from None
        raise
    if not model_bytes:
        check_document_count(documents, sources, need=2)
        raise UserInputError("data.corpus: no document fell in the train split; lower data.val_fraction")
    print(
        f"prepare: tokenizer trained on {chars / 1e6:.1f}M characters of {_plural(len(train_groups), 'group')} "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return model_bytes


def _train_tokenizer_task(sample_refs: list, config: TokenizerConfig, seed: int) -> tuple[bytes, int, int]:
    """A Ray task of 1 CPU: (model bytes or an empty bytes when the sample is empty, characters trained on,
    documents in the train groups)."""
    import ray  # ray: as in _tokenizer_model (this runs in a Ray worker)

    rows = []
    for table in ray.get(sample_refs):
        rows += table.to_pylist()
    rows.sort(key=lambda row: row["index"])
    for row in rows:
        if row["error"]:
            raise UserInputError(row["error"])
    texts = [text for row in rows for text in row["texts"]]
    documents = sum(row["documents"] for row in rows)
    if not texts:
        return b"", 0, documents
    return train_tokenizer(texts, config, seed=seed), sum(map(len, texts)), documents


def _map_groups(groups: list[Group], fn, **fn_kwargs) -> ray.data.Dataset:
    """A Ray Data dataset of one row per group, mapped by fn in tasks of 1 CPU each."""
    import ray.data  # ray: as in _tokenizer_model

    context = ray.data.DataContext.get_current()
    # One stage only: Ray Data's default holds back CPUs for other stages, which would idle them here.
    context.op_resource_reservation_enabled = False
    context.enable_progress_bars = False  # prepare prints its own progress
    items = [{"group": group.to_json()} for group in groups]
    return ray.data.from_items(items, override_num_blocks=len(items)).map(fn, fn_kwargs=fn_kwargs, num_cpus=1)


def _build_groups(groups: list[Group], build_dir: Path, model_bytes: bytes, settings: dict) -> dict[int, dict]:
    """Build the groups in Ray Data tasks, printing progress; returns {group index: record}."""
    if not groups:
        return {}
    records: dict[int, dict] = {}
    nodes: set[str] = set()
    progress = _Progress(len(groups), sum(group.bytes for group in groups))
    dataset = _map_groups(groups, build_group_row, build_dir=str(build_dir), model_bytes=model_bytes, settings=settings)
    for row in dataset.iter_rows():
        if row["error"]:
            raise UserInputError(row["error"])
        record = json.loads(row["record"])
        records[record["index"]] = record
        nodes.add(row["node"])
        progress.update(record)
    elapsed = time.perf_counter() - progress.started
    print(
        f"prepare: built {_plural(len(groups), 'group')} on {_plural(len(nodes), 'node')} in {elapsed:.1f} s "
        f"({_count(progress.tokens / max(elapsed, 1e-9))} tok/s)",
        flush=True,
    )
    return records


class _Progress:
    """Groups, bytes, documents, tokens and shards done so far; their rates and an ETA from the bytes."""

    def __init__(self, groups: int, total_bytes: int):
        self.groups, self.total_bytes = groups, total_bytes
        self.done = self.bytes = self.documents = self.tokens = self.shards = 0
        self.started = time.perf_counter()
        self.last_print = 0.0

    def update(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.bytes += record["bytes"]
        for split in record["splits"].values():
            self.documents += split["num_documents"]
            self.tokens += split["num_tokens"]
            self.shards += len(split["shards"])
        now = time.perf_counter()
        if now - self.last_print < PROGRESS_EVERY_S and self.done < self.groups:
            return
        self.last_print = now
        elapsed = max(now - self.started, 1e-9)
        eta = elapsed * (self.total_bytes - self.bytes) / max(self.bytes, 1)
        print(
            f"prepare: {self.done}/{self.groups} groups, {self.bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB "
            f"({100 * self.bytes / max(self.total_bytes, 1):.0f}%), {self.tokens:,} tokens, "
            f"{_plural(self.shards, 'shard')} in {elapsed:.1f} s | {self.bytes / 1e6 / elapsed:.2f} MB/s, "
            f"{_count(self.documents / elapsed)} docs/s, {_count(self.tokens / elapsed)} tok/s | ETA {eta:.0f} s",
            flush=True,
        )


def _split_entry(parts: list[dict]) -> dict:
    """One split's manifest entry from its per-group parts, in group order."""
    entry = {
        key: sum(part[key] for part in parts)
        for key in ("num_documents", "num_tokens", "num_bytes", "num_samples", "dropped_tokens")
    }
    entry["shards"] = [shard for part in parts for shard in part["shards"]]
    return entry


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
