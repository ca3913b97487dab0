"""JSONL records of prompts and responses, read and checked on the driver.

Formats (one JSON object per line):

* SFT: `{"prompt": ..., "response": ...}`, or `{"messages": [{"role", "content"}, ...]}` in the
  chat template of `workloads.task.render_chat` (the last message is the assistant's response).
* Preferences: `{"prompt", "chosen", "rejected"}`, or `{"prompt", "responses": [...],
  "ranking": [...]}` where `ranking` lists the indices of `responses` from best to worst;
  a ranking becomes every pair it orders, one pair being one training sample.

Every problem is one line naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from workloads.errors import UserInputError
from workloads.task import render_chat


@dataclass
class Record:
    prompt: str
    responses: list[str]  # SFT: [response]; preferences: [chosen, rejected]
    where: str  # "file:line", for messages


def read_jsonl(path: Path):
    """("file:line", record) for each non-blank line of a JSONL file of objects; bad lines are one-line errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserInputError(f"{path}: cannot read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not UTF-8 text (byte {e.start})") from e
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise UserInputError(f"{path}:{number}: not valid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(record, dict):
            raise UserInputError(f"{path}:{number}: a record must be a JSON object")
        yield f"{path}:{number}", record


def text_field(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise UserInputError(f"{where}: missing field '{key}'")
    if not isinstance(record[key], str):
        raise UserInputError(f"{where}: field '{key}' must be a string")
    return record[key]


def chat_record(record: dict[str, Any], where: str, awaiting_answer: bool = False) -> tuple[str, str]:
    """(prompt, response) of a record's `messages` in the chat template; one line naming `where` if malformed.

    `awaiting_answer`: a conversation whose last message is not the assistant's is a prompt
    waiting for one (its response is empty).
    """
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise UserInputError(f"{where}: field 'messages' must be a list of {{role, content}} objects")
    if awaiting_answer and messages and messages[-1].get("role") != "assistant":
        messages = [*messages, {"role": "assistant", "content": ""}]
    try:
        return render_chat(messages)
    except ValueError as e:
        raise UserInputError(f"{where}: messages: {e}") from None


def read_sft(path: Path) -> list[Record]:
    records = []
    for where, record in read_jsonl(path):
        if "messages" in record:
            prompt, response = chat_record(record, where)
        else:
            prompt, response = text_field(record, "prompt", where), text_field(record, "response", where)
        records.append(Record(prompt, [response], where))
    return records


def read_preferences(path: Path) -> list[Record]:
    records = []
    for where, record in read_jsonl(path):
        prompt = text_field(record, "prompt", where)
        if "responses" not in record:
            records.append(
                Record(prompt, [text_field(record, "chosen", where), text_field(record, "rejected", where)], where)
            )
            continue
        responses, ranking = record["responses"], record.get("ranking")
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise UserInputError(f"{where}: field 'responses' must be a list of at least 2 strings")
        if not isinstance(ranking, list) or sorted(ranking) != list(range(len(responses))):
            raise UserInputError(
                f"{where}: ranking {ranking!r} is not an order of the {len(responses)} responses "
                f"(indices 0..{len(responses) - 1}, best first, each once)"
            )
        for better, worse in combinations(ranking, 2):  # every pair the ranking orders
            records.append(Record(prompt, [responses[better], responses[worse]], where))
    return records
