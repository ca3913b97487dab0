"""The prepared prompt set: the only data an RL run reads.

A directory holding `prompts.jsonl` (one `{"prompt": text, "ids": [...]}` per line, the ids
opening with the end-of-document token, as every sequence of the fine-tuning stages does),
the tokenizer and `manifest.json` (with the file's sha256). The driver writes it once,
addressed by a hash of its sources and tokenizer; the learner reads it whole (prompts are few
and short). The text goes to the reward, the ids to the generator.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A prompt set is one more kind of the fine-tuning stages' prepared datasets: their manifest, format and tokenizer file.
from workloads.stages.datasets import FORMAT_VERSION, MANIFEST_FILE, TOKENIZER_FILE, read_manifest

KIND = "prompts"
PROMPTS_FILE = "prompts.jsonl"


def write_prompt_set(
    directory: Path, texts: list[str], ids: list[list[int]], manifest: dict[str, Any], tokenizer_bytes: bytes
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PROMPTS_FILE
    path.write_text(
        "".join(json.dumps({"prompt": t, "ids": i}) + "\n" for t, i in zip(texts, ids, strict=True)), encoding="utf-8"
    )
    (directory / TOKENIZER_FILE).write_bytes(tokenizer_bytes)
    manifest = {
        **manifest,
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "prompts": len(texts),
        "files": {PROMPTS_FILE: hashlib.sha256(path.read_bytes()).hexdigest()},
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def read_prompt_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a prepared prompt set (one line naming the directory if it is none)."""
    return read_manifest(directory, KIND)


@dataclass
class PromptSet:
    texts: list[str]
    ids: list[list[int]]  # each opens with the end-of-document token

    @classmethod
    def load(cls, directory: str | Path) -> PromptSet:
        read_prompt_manifest(directory)
        rows = [json.loads(line) for line in (Path(directory) / PROMPTS_FILE).read_text(encoding="utf-8").splitlines()]
        return cls([row["prompt"] for row in rows], [row["ids"] for row in rows])

    def __len__(self) -> int:
        return len(self.texts)

    def fitting(self, longest: int) -> PromptSet:
        """The prompts of at most `longest` tokens (those that leave room for a whole response), in order."""
        keep = [i for i, ids in enumerate(self.ids) if len(ids) <= longest]
        return PromptSet([self.texts[i] for i in keep], [self.ids[i] for i in keep])
