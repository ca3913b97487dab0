"""Prompt sets, the only training data of RL: read from JSONL, tokenized once into a content-addressed directory.

The set is addressed by a hash of its source files and the tokenizer, built in a
temporary directory and renamed into place: a finished one is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.sections import dataset_root
from orchestrator.data.finetuning import BUILTIN, builtin_files
from orchestrator.data.records import chat_record, read_jsonl
from workloads.errors import UserInputError
from workloads.rl.prompts import PromptSet, read_prompt_manifest, write_prompt_set
from workloads.schema import option
from workloads.storage.publish import publish_once
from workloads.tokenizer import Tokenizer


@dataclass
class PromptDataConfig:
    """The prompts rolled out (the only training data of RL) and the held-out prompts sampled at the end."""

    train_file: str = option(
        BUILTIN,
        'JSONL of prompts: {"prompt"} records, or SFT records ({"prompt", "response"} or '
        "{\"messages\"}; responses are ignored); 'builtin' = the built-in task's SFT and preference prompts",
    )
    val_file: str = option(
        "",
        "JSONL of held-out prompts sampled after training; empty = the built-in task's "
        "held-out prompts when train_file is builtin, else none",
    )
    dataset_dir: str = option("", "root of prepared datasets; empty = <run.output_dir>/datasets")
    shuffle_seed: int = option(0, "seed of the order in which prompts are drawn, iteration after iteration")

    def validate(self) -> None:
        for name in ("train_file", "val_file"):
            path = getattr(self, name)
            if path and path != BUILTIN and not Path(path).is_file():
                raise UserInputError(f"data.{name}: no such file: {path}")


def read_prompts(path: Path) -> list[str]:
    """Prompt texts of a JSONL file of prompt, SFT or chat records (responses are not used)."""
    prompts = []
    for where, record in read_jsonl(path):
        if "messages" in record:
            prompts.append(chat_record(record, where, awaiting_answer=True)[0])
        elif isinstance(record.get("prompt"), str):
            prompts.append(record["prompt"])
        else:
            raise UserInputError(f"{where}: needs a string field 'prompt' (or 'messages')")
    if not prompts:
        raise UserInputError(f"{path}: holds no prompts")
    return prompts


def prepare_prompts(cfg, tokenizer: Tokenizer) -> tuple[Path, dict[str, Any]]:
    """The prepared prompt set of an RL stage's tree `cfg` (built once, addressed by its sources and tokenizer)
    and its manifest."""
    root = dataset_root(cfg.run.output_dir, cfg.data.dataset_dir)
    root.mkdir(parents=True, exist_ok=True)
    if cfg.data.train_file == BUILTIN:
        files = builtin_files(root)
        sources = [files["sft"], files["preferences"]]  # held-out prompts are in neither
    else:
        sources = [Path(cfg.data.train_file)]
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in sources]
    digest = hashlib.sha256(
        json.dumps({"kind": "prompts", "sources": digests, "tokenizer": tokenizer.sha256}, sort_keys=True).encode()
    ).hexdigest()
    target = root / f"prompts-{digest[:16]}"
    if target.exists():
        print(f"{cfg.algorithm}: prompts already prepared: {target} (nothing to do)")
    else:
        texts = list(dict.fromkeys(text for path in sources for text in read_prompts(path)))  # each prompt once
        ids = [[tokenizer.eos_id, *encoded] for encoded in tokenizer.encode_batch(texts)]
        manifest = {
            "dataset_hash": digest,
            "sources": [{"path": str(p), "sha256": d} for p, d in zip(sources, digests)],
            "tokenizer": {"file": "tokenizer.model", "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size},
        }
        publish_once(target, lambda staging: write_prompt_set(staging, texts, ids, manifest, tokenizer.model_bytes))
        print(f"{cfg.algorithm}: prepared {len(texts)} prompts -> {target}")
    manifest = read_prompt_manifest(target)
    if manifest["tokenizer"]["sha256"] != tokenizer.sha256:
        raise UserInputError(f"{target}: tokenized with another tokenizer than the starting checkpoint's")
    prompts = PromptSet.load(target)
    kept = len(prompts.fitting(cfg.model.max_seq_len - cfg.rl.max_new_tokens))
    if not kept:
        raise UserInputError(
            f"{', '.join(map(str, sources))}: no prompt leaves room for rl.max_new_tokens="
            f"{cfg.rl.max_new_tokens} new tokens within model.max_seq_len={cfg.model.max_seq_len}"
        )
    if kept < len(prompts):
        print(
            f"{cfg.algorithm}: {len(prompts) - kept} of {len(prompts)} prompts left out: longer than "
            f"model.max_seq_len - rl.max_new_tokens = {cfg.model.max_seq_len - cfg.rl.max_new_tokens} tokens"
        )
    return target, manifest
