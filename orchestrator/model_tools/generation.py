"""Sampling text from a checkpoint: prompts read from a file and fitted to the model's context.

The command is `python -m orchestrator.generate`; the sampler is `workloads.generation`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.data.records import read_jsonl, text_field
from workloads.errors import UserInputError


def read_prompts(prompt: str | None, path: Path | None) -> list[str]:
    """[prompt] when given, else the prompts of a file: .jsonl with a 'prompt' field per line, else one per line."""
    if prompt is not None:
        return [prompt]
    if path.suffix == ".jsonl":
        prompts = [text_field(record, "prompt", where) for where, record in read_jsonl(path)]
    else:
        try:
            prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserInputError(f"{path}: cannot read prompts ({e})") from e
    if not prompts:
        raise UserInputError(f"{path}: holds no prompts")
    return prompts


def fit_prompts(prompts: list[list[int]], context: int, max_new_tokens: int, truncate: bool) -> list[list[int]]:
    """Prompts that leave room for at least one new token; cut (with a note) only when asked to."""
    fitted = []
    for number, ids in enumerate(prompts, start=1):
        if len(ids) < context:
            fitted.append(ids)
            continue
        if not truncate:
            raise UserInputError(
                f"prompt {number}: {len(ids)} tokens leave no room in the model's context of {context} tokens "
                "(--truncate-prompts keeps its last tokens)"
            )
        keep = context - min(max_new_tokens, context // 2)
        print(
            f"generate: prompt {number} cut to its last {keep} of {len(ids)} tokens to fit the context of {context}",
            file=sys.stderr,
        )
        fitted.append(ids[-keep:])
    return fitted
