"""Fine-tuning datasets: prompts that leave no room, cut responses, the split by prompt."""

from __future__ import annotations

import json

import pytest

from orchestrator.data.finetuning import split_by_prompt, tokenize
from orchestrator.data.records import read_preferences, read_sft
from workloads.errors import UserInputError
from workloads.tokenizer import Tokenizer


def jsonl(tmp_path, *records, name="records.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_dataset) -> Tokenizer:
    return Tokenizer.load(tiny_dataset / "tokenizer.model")


def test_a_prompt_with_no_room_for_a_response_is_refused(tmp_path, tokenizer):
    records = read_sft(jsonl(tmp_path, {"prompt": "x = 1\n" * 40, "response": "y"}))
    with pytest.raises(UserInputError, match=r"records.jsonl:1: the prompt takes \d+ tokens, leaving no room"):
        tokenize(records, tokenizer, 64, "sft")


def test_long_responses_are_cut_and_counted(tmp_path, tokenizer):
    records = read_sft(jsonl(tmp_path, {"prompt": "p", "response": "word " * 100}, {"prompt": "p", "response": "ok"}))
    examples, cut = tokenize(records, tokenizer, 32, "sft")
    assert cut == 1 and len(examples[0].prompt) + len(examples[0].response) + 2 == 33


def test_split_by_prompt_keeps_a_prompts_pairs_together(tmp_path):
    records = read_preferences(
        jsonl(tmp_path, *[{"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]} for i in range(200)])
    )
    train, val = split_by_prompt(records, 0.1, seed=3)
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in val})
    assert 0.04 < len(val) / len(records) < 0.2
    assert split_by_prompt(records, 0.1, seed=3) == (train, val)
