"""Tokenized datasets of the fine-tuning stages: their on-disk format, how they are built, how workers read them.

Two kinds, each a directory of `.npy` arrays per split ("train", "val") plus `manifest.json`:

* `sft`: examples packed whole into rows of `seq_len + 1` tokens, like pretraining's
  samples: `tokens`, `segments` (one id per example, so attention stays inside an
  example) and `scored` (True where the token is a response token to predict).
* `preference`: one row per (prompt, chosen, rejected) pair, each sequence right-padded
  to `seq_len`: `chosen`, `rejected`, their lengths, and the prompt's length.

Every sequence is `[eos] + prompt + response + [eos]`: it opens as a document does in
pretraining (after an end-of-document token), and the response ends the document.
Workers memory-map the arrays; a sample index is a row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workloads.errors import UserInputError

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
IGNORED_TARGET = -100
PADDING_SEGMENT = -1  # padding at the end of a packed row: attends only to itself, scored never
_ARRAYS = {
    "sft": ("tokens", "segments", "scored"),
    "preference": ("chosen", "rejected", "chosen_len", "rejected_len", "prompt_len"),
}


@dataclass
class Example:
    """One tokenized prompt and its response(s) (ids without the framing end-of-document tokens)."""

    prompt: list[int]
    response: list[int]  # SFT's response, or the chosen one of a pair
    rejected: list[int] | None = None


def sequence(eos_id: int, prompt: list[int], response: list[int]) -> list[int]:
    return [eos_id, *prompt, *response, eos_id]


# ---------------------------------------------------------------------------
# Building (on the driver)
# ---------------------------------------------------------------------------


def pack_sft(examples: list[Example], seq_len: int, eos_id: int) -> dict[str, np.ndarray]:
    """Examples packed whole, in order, into rows of seq_len + 1 tokens (an example never spans two rows)."""
    width = seq_len + 1
    rows: list[tuple[list[int], list[int], list[bool]]] = []
    tokens: list[int] = []
    segments: list[int] = []
    scored: list[bool] = []
    for index, example in enumerate(examples):
        ids = sequence(eos_id, example.prompt, example.response)
        if len(ids) > width:
            raise ValueError(f"example {index} has {len(ids)} tokens, more than a row of {width}")
        if len(tokens) + len(ids) > width:
            rows.append((tokens, segments, scored))
            tokens, segments, scored = [], [], []
        # A token is scored when it is predicted from the prompt or an earlier response token:
        # the response and the closing end-of-document token.
        first_scored = 1 + len(example.prompt)
        tokens += ids
        segments += [index] * len(ids)
        scored += [position >= first_scored for position in range(len(ids))]
    if tokens:
        rows.append((tokens, segments, scored))
    out = {
        "tokens": np.zeros((len(rows), width), np.int32),
        "segments": np.full((len(rows), width), PADDING_SEGMENT, np.int32),
        "scored": np.zeros((len(rows), width), bool),
    }
    for row, (row_tokens, row_segments, row_scored) in enumerate(rows):
        out["tokens"][row, : len(row_tokens)] = row_tokens
        out["segments"][row, : len(row_segments)] = row_segments
        out["scored"][row, : len(row_scored)] = row_scored
    # Padding gets ids of its own per row position, so that it never joins an example's document.
    padding = out["segments"] == PADDING_SEGMENT
    out["segments"][padding] = -1 - np.nonzero(padding)[1]
    return out


def pad_preferences(examples: list[Example], seq_len: int, eos_id: int) -> dict[str, np.ndarray]:
    n = len(examples)
    out = {
        "chosen": np.zeros((n, seq_len), np.int32),
        "rejected": np.zeros((n, seq_len), np.int32),
        "chosen_len": np.zeros(n, np.int32),
        "rejected_len": np.zeros(n, np.int32),
        "prompt_len": np.zeros(n, np.int32),
    }
    for row, example in enumerate(examples):
        for side, response in (("chosen", example.response), ("rejected", example.rejected)):
            ids = sequence(eos_id, example.prompt, response)
            if len(ids) > seq_len:
                raise ValueError(f"pair {row} has a {side} sequence of {len(ids)} tokens, more than {seq_len}")
            out[side][row, : len(ids)] = ids
            out[f"{side}_len"][row] = len(ids)
        out["prompt_len"][row] = 1 + len(example.prompt)  # with the opening end-of-document token
    return out


def write_dataset(
    directory: Path,
    kind: str,
    splits: dict[str, dict[str, np.ndarray]],
    manifest: dict[str, Any],
    tokenizer_bytes: bytes,
) -> None:
    """Write the arrays, the tokenizer and the manifest (with each array's sha256) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, arrays in splits.items():
        for name in _ARRAYS[kind]:
            path = directory / f"{split}-{name}.npy"
            np.save(path, arrays[name])
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / TOKENIZER_FILE).write_bytes(tokenizer_bytes)
    manifest = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "files": files,
        "rows": {split: int(len(next(iter(arrays.values())))) for split, arrays in splits.items()},
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


# ---------------------------------------------------------------------------
# Reading (in the workers)
# ---------------------------------------------------------------------------


def read_manifest(directory: str | Path, kind: str) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{directory}: no {MANIFEST_FILE}; not a prepared {kind} dataset") from None
    except ValueError as e:
        raise UserInputError(f"{path}: unreadable manifest ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("kind") != kind:
        raise UserInputError(
            f"{path}: a {manifest.get('kind')!r} dataset of format {manifest.get('format_version')!r}, "
            f"not a {kind!r} dataset of format {FORMAT_VERSION}"
        )
    return manifest


class _Split:
    kind = ""

    def __init__(self, directory: str | Path, split: str):
        self.directory = Path(directory)
        self.manifest = read_manifest(directory, self.kind)
        self.arrays = {
            name: np.load(self.directory / f"{split}-{name}.npy", mmap_mode="r") for name in _ARRAYS[self.kind]
        }

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def num_samples(self) -> int:
        return len(self)

    def rows(self, name: str, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.arrays[name][np.asarray(indices)], dtype=np.int64))


class SFTSplit(_Split):
    """Packed SFT rows: `get` gives (inputs, segment_ids, targets), each (B, seq_len); targets are
    IGNORED_TARGET where the token is not a response token (and at padding slots, index -1)."""

    kind = "sft"
    scored_targets = True  # `get` gives (inputs, segment_ids, targets) as evaluation reads them

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices)
        rows = np.maximum(indices, 0)
        tokens, segments = self.rows("tokens", rows), self.rows("segments", rows)
        scored = torch.from_numpy(np.asarray(self.arrays["scored"][rows], dtype=bool))
        targets = tokens[:, 1:].masked_fill(~scored[:, 1:], IGNORED_TARGET)
        targets[torch.from_numpy(indices < 0)] = IGNORED_TARGET
        return tokens[:, :-1], segments[:, :-1], targets


class PreferenceSplit(_Split):
    """Preference pairs: `get` gives chosen and rejected sequences (B, seq_len), the index of each
    one's last token (B,), and response-only targets for log-probabilities (B, seq_len)."""

    kind = "preference"

    def get(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.maximum(np.asarray(indices), 0)
        prompt_len = self.rows("prompt_len", rows)
        batch = {}
        for side in ("chosen", "rejected"):
            ids, length = self.rows(side, rows), self.rows(f"{side}_len", rows)
            positions = torch.arange(ids.shape[1])[None, :]  # (1, T)
            # Target at position t is token t+1; scored for the response and its closing end-of-document token.
            scored = (positions + 1 >= prompt_len[:, None]) & (positions + 1 < length[:, None])
            targets = torch.cat((ids[:, 1:], torch.zeros_like(ids[:, :1])), dim=1).masked_fill(~scored, IGNORED_TARGET)
            batch[side], batch[f"{side}_last"], batch[f"{side}_targets"] = ids, length - 1, targets
        return batch
