"""Checks that a prepared dataset fits the run, made on the driver before any worker starts.

Each failure is one line naming the file, field or value; nothing has been
written by the time they run (except the dataset's own record of verified shards).

Shard checksums are computed in full once: each shard that matched its manifest
checksum is recorded in `<dataset>/verified.json` with its size, modification time,
inode and change time, and later launches re-hash only a shard whose record no longer
matches. Rewriting, truncating or replacing a shard changes at least one of those
(the change time cannot be set back by any user), so a sweep's many launches cost
metadata reads instead of a re-hash of the whole corpus each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.data.stat_records import read_record, stat_signature, write_record
from workloads.data.config import DataConfig
from workloads.data.loader import PackedDataset, load_manifest
from workloads.data.shards import check_shard_sha256, file_sha256
from workloads.errors import UserInputError
from workloads.model import ModelConfig
from workloads.tokenizer import Tokenizer, TokenizerConfig

VERIFIED_FILE = "verified.json"  # in the dataset directory: {shard file: its stat signature and checksum}


def verify_shard_checksums(dataset_dir: Path, manifest: dict[str, Any], full: bool = False) -> int:
    """Every shard against its manifest sha256, re-hashing only shards changed since last verified
    (every shard when `full`); returns the number of shards re-hashed."""
    record = {} if full else read_record(dataset_dir / VERIFIED_FILE)
    hashed = 0
    changed = False
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            path = dataset_dir / shard["file"]
            try:
                signature = stat_signature(path)
            except OSError as e:
                raise UserInputError(f"{path}: unreadable shard ({e.strerror})") from e
            if record.get(shard["file"]) == {"signature": signature, "sha256": shard["sha256"]}:
                continue
            actual = check_shard_sha256(path, shard["sha256"])
            record[shard["file"]] = {"signature": signature, "sha256": actual}
            changed = True
            hashed += 1
    if changed:
        write_record(dataset_dir / VERIFIED_FILE, record)
    return hashed


def verify_dataset(dataset_dir: Path) -> None:
    """`orchestrator.prepare --verify`: the tokenizer and every shard re-hashed against the manifest."""
    manifest = load_manifest(dataset_dir)
    _check_tokenizer_file(dataset_dir, manifest)
    for split in ("train", "val"):
        PackedDataset(dataset_dir, split)  # every shard's layout and sample count against the manifest
    shards = verify_shard_checksums(dataset_dir, manifest, full=True)
    print(f"prepare: verified the tokenizer and {shards} shards of {dataset_dir}: all match the manifest", flush=True)


def _check_tokenizer_file(dataset_dir: Path, manifest: dict[str, Any]) -> None:
    expected = manifest["tokenizer"]
    path = dataset_dir / expected["file"]
    if not path.is_file():
        raise UserInputError(f"{path}: the dataset's tokenizer model is missing")
    actual = file_sha256(path)
    if actual != expected["sha256"]:
        raise UserInputError(
            f"{path}: sha256 {actual[:12]}... differs from the dataset manifest's {expected['sha256'][:12]}... "
            "(the tokens were made with another tokenizer)"
        )


def check_tokenizer(
    dataset_dir: Path, manifest: dict[str, Any], tokenizer: TokenizerConfig, model: ModelConfig
) -> None:
    expected = manifest["tokenizer"]
    path = dataset_dir / expected["file"]
    _check_tokenizer_file(dataset_dir, manifest)
    if tokenizer.model_path and file_sha256(Path(tokenizer.model_path)) != expected["sha256"]:
        raise UserInputError(
            f"tokenizer.model_path: {tokenizer.model_path} is not the tokenizer dataset {dataset_dir.name} "
            "was tokenized with"
        )
    vocab = Tokenizer.load(path).vocab_size
    if vocab != expected["vocab_size"]:
        raise UserInputError(
            f"{path}: vocabulary of {vocab} tokens, but the dataset manifest says {expected['vocab_size']}"
        )
    if model.vocab_size < vocab:
        raise UserInputError(
            f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's vocabulary ({vocab})"
        )


def check_dataset(
    dataset_dir: Path, data: DataConfig, tokenizer: TokenizerConfig, model: ModelConfig
) -> dict[str, Any]:
    """Manifest, tokenizer and shard checksums (see `verify_shard_checksums`) against a run's data, tokenizer and
    model sections; returns the manifest."""
    manifest = load_manifest(dataset_dir)
    check_tokenizer(dataset_dir, manifest, tokenizer, model)
    if manifest["seq_len"] != data.seq_len:
        raise UserInputError(
            f"data.seq_len={data.seq_len} but the dataset was packed with seq_len {manifest['seq_len']}"
        )
    for split in ("train", "val"):
        if manifest["splits"][split]["num_samples"] == 0:
            raise UserInputError(
                f"data.corpus: the {split} split holds no complete sample of {data.seq_len + 1} tokens"
            )
        PackedDataset(dataset_dir, split)  # maps every shard: its layout and sample count against the manifest
    verify_shard_checksums(dataset_dir, manifest)
    return manifest
