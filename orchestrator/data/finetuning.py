"""Fine-tuning datasets on the driver: records (`orchestrator.data.records`) split, tokenized and written once.

Records are split into train and validation by a hash of the prompt (so all pairs of
one prompt land on one side) unless `data.val_file` is given. The dataset directory is
addressed by a hash of the files' contents, the tokenizer and the settings, built in a
temporary directory and renamed into place: a finished one is reused, a half-built one
never used. Every problem is one line naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.data.records import Record, read_preferences, read_sft
from workloads.errors import UserInputError
from workloads.schema import option
from workloads.stages.datasets import MANIFEST_FILE, Example, pack_sft, pad_preferences, read_manifest, write_dataset
from workloads.storage.publish import publish_once
from workloads.task import write_task
from workloads.tokenizer import Tokenizer

BUILTIN = "builtin"
KINDS = {"sft": "sft", "reward": "preference", "dpo": "preference"}


@dataclass
class StageDataConfig:
    """The `data.` section of a fine-tuning stage: which records, how they are split and fitted."""

    train_file: str = option(
        BUILTIN,
        "JSONL of training records, or a dataset directory prepared earlier; 'builtin' = the built-in task "
        "made from the embedded corpus",
    )
    val_file: str = option("", "JSONL of held-out records; empty = hold out val_fraction of the train file's prompts")
    val_fraction: float = option(0.05, "share of prompts held out for validation when there is no val_file")
    split_seed: int = option(1234, "seed of the train/validation split by prompt")
    seq_len: int = option(0, "longest training sequence in tokens; 0 = the model's context (model.max_seq_len)")
    dataset_dir: str = option("", "root of prepared datasets; empty = <run.output_dir>/datasets")
    shuffle_seed: int = option(0, "seed of the global sample order used in training")

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise UserInputError(f"data.val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.seq_len < 0:
            raise UserInputError(f"data.seq_len: must be >= 0, got {self.seq_len}")
        for name in ("train_file", "val_file"):
            path = getattr(self, name)
            prepared = name == "train_file" and (Path(path) / MANIFEST_FILE).is_file()
            if path and path != BUILTIN and not (Path(path).is_file() or prepared):
                raise UserInputError(f"data.{name}: no such file (or prepared dataset): {path}")


# ---------------------------------------------------------------------------
# Preparing a dataset
# ---------------------------------------------------------------------------


def builtin_files(root: Path) -> dict[str, Path]:
    """The built-in task's JSONL files under `root` (written once)."""
    directory = root / "builtin-task"
    publish_once(directory, write_task, complete=lambda d: (d / "heldout.jsonl").exists())
    return {name: directory / f"{name}.jsonl" for name in ("sft", "preferences", "heldout")}


def source_files(data: StageDataConfig, kind: str, root: Path) -> tuple[Path, Path | None]:
    if data.train_file != BUILTIN:
        return Path(data.train_file), Path(data.val_file) if data.val_file else None
    files = builtin_files(root)
    # SFT trains on the neutral file; the preference stages on the ranked pairs.
    return files["sft" if kind == "sft" else "preferences"], Path(data.val_file) if data.val_file else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_stage_dataset(stage: str, data: StageDataConfig, tokenizer: Tokenizer, seq_len: int, root: Path) -> Path:
    """The prepared dataset directory for `stage` (sft, reward, dpo); built now unless it exists."""
    kind = KINDS[stage]
    root.mkdir(parents=True, exist_ok=True)
    train_path, val_path = source_files(data, kind, root)
    identity = {
        "kind": kind,
        "train": _sha256(train_path),
        "val": _sha256(val_path) if val_path else "",
        "tokenizer": tokenizer.sha256,
        "seq_len": seq_len,
        "val_fraction": data.val_fraction,
        "split_seed": data.split_seed,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    target = root / f"{kind}-{digest[:16]}"
    if target.exists():
        read_manifest(target, kind)
        print(f"{stage}: dataset already prepared: {target} (nothing to do)")
        return target

    read = read_sft if kind == "sft" else read_preferences
    records = read(train_path)
    if val_path:
        train, val = records, read(val_path)
    else:
        train, val = split_by_prompt(records, data.val_fraction, data.split_seed)
    if not train or not val:
        raise UserInputError(
            f"{train_path}: {len(records)} records leave no {'train' if not train else 'validation'} records"
        )
    splits, truncated = {}, 0
    for split, rows in (("train", train), ("val", val)):
        examples, cut = tokenize(rows, tokenizer, seq_len, kind)
        truncated += cut
        splits[split] = (pack_sft if kind == "sft" else pad_preferences)(examples, seq_len, tokenizer.eos_id)
    manifest = {
        "dataset_hash": digest,
        "stage": stage,
        "seq_len": seq_len,
        "sources": {
            "train": {"path": str(train_path), "sha256": identity["train"]},
            "val": {"path": str(val_path), "sha256": identity["val"]} if val_path else None,
        },
        "records": {"train": len(train), "val": len(val)},
        "responses_truncated": truncated,
        "tokenizer": {"file": "tokenizer.model", "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size},
    }
    publish_once(target, lambda staging: write_dataset(staging, kind, splits, manifest, tokenizer.model_bytes))
    unit = "examples" if kind == "sft" else "pairs"
    note = f", {truncated} responses cut to fit {seq_len} tokens" if truncated else ""
    print(f"{stage}: prepared {len(train)} train / {len(val)} validation {unit}{note} -> {target}")
    return target


def split_by_prompt(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    train, val = [], []
    for record in records:
        key = hashlib.sha256(f"{seed}:{record.prompt}".encode()).digest()
        (val if int.from_bytes(key[:8], "big") / 2**64 < val_fraction else train).append(record)
    return train, val


def tokenize(records: list[Record], tokenizer: Tokenizer, seq_len: int, kind: str) -> tuple[list[Example], int]:
    """Examples whose sequences fit `seq_len` (+1 for SFT's packed rows); responses that do not fit are
    cut (counted), a prompt that leaves no room for a response is refused."""
    room = seq_len + 1 if kind == "sft" else seq_len
    prompts = tokenizer.encode_batch([r.prompt for r in records])
    responses = tokenizer.encode_batch([text for r in records for text in r.responses])
    per_record = len(records[0].responses) if records else 0
    examples, truncated = [], 0
    for index, (record, prompt) in enumerate(zip(records, prompts)):
        left = room - len(prompt) - 2  # the opening and closing end-of-document tokens
        if left < 1:
            raise UserInputError(
                f"{record.where}: the prompt takes {len(prompt)} tokens, leaving no room for a response "
                f"within {seq_len} tokens (data.seq_len / model.max_seq_len)"
            )
        own = responses[index * per_record : (index + 1) * per_record]
        truncated += sum(len(r) > left for r in own)
        fitted = [r[:left] for r in own]
        examples.append(Example(prompt, fitted[0], fitted[1] if kind == "preference" else None))
    return examples, truncated


def check_stage_dataset(dataset_dir: Path, stage: str, tokenizer: Tokenizer) -> dict[str, Any]:
    """The manifest of a prepared dataset, checked against the starting checkpoint's tokenizer."""
    manifest = read_manifest(dataset_dir, KINDS[stage])
    if manifest["tokenizer"]["sha256"] != tokenizer.sha256:
        raise UserInputError(
            f"{dataset_dir}: tokenized with another tokenizer ({manifest['tokenizer']['sha256'][:12]}...) "
            f"than the starting checkpoint's ({tokenizer.sha256[:12]}...)"
        )
    for name, sha in manifest["files"].items():
        if _sha256(dataset_dir / name) != sha:
            raise UserInputError(f"{dataset_dir / name}: sha256 differs from the manifest's; prepare the dataset again")
    return manifest
