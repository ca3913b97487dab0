"""Checks that a prepared dataset fits the run, made on the driver before any worker starts.

Each failure is one line naming the file, field or value; nothing has been
written by the time they run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.pretrain_config import PretrainConfig
from workloads.data.loader import PackedDataset, load_manifest
from workloads.data.shards import file_sha256
from workloads.errors import UserInputError
from workloads.tokenizer import Tokenizer


def check_tokenizer(cfg: PretrainConfig, dataset_dir: Path, manifest: dict[str, Any]) -> None:
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
    if cfg.tokenizer.model_path and file_sha256(Path(cfg.tokenizer.model_path)) != expected["sha256"]:
        raise UserInputError(
            f"tokenizer.model_path: {cfg.tokenizer.model_path} is not the tokenizer dataset {dataset_dir.name} "
            "was tokenized with"
        )
    vocab = Tokenizer.load(path).vocab_size
    if vocab != expected["vocab_size"]:
        raise UserInputError(f"{path}: vocabulary of {vocab} tokens, but the dataset manifest says {expected['vocab_size']}")
    if cfg.model.vocab_size < vocab:
        raise UserInputError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's vocabulary ({vocab})")


def check_dataset(cfg: PretrainConfig, dataset_dir: Path) -> dict[str, Any]:
    """Manifest, tokenizer and shard checksums against the run's config; returns the manifest."""
    manifest = load_manifest(dataset_dir)
    check_tokenizer(cfg, dataset_dir, manifest)
    if manifest["seq_len"] != cfg.data.seq_len:
        raise UserInputError(f"data.seq_len={cfg.data.seq_len} but the dataset was packed with seq_len {manifest['seq_len']}")
    for split in ("train", "val"):
        if manifest["splits"][split]["num_samples"] == 0:
            raise UserInputError(f"data.corpus: the {split} split holds no complete sample of {cfg.data.seq_len + 1} tokens")
        PackedDataset(dataset_dir, split).verify_checksums()
    return manifest
