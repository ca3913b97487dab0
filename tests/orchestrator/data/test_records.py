"""Fine-tuning records: both SFT forms, rankings expanded into pairs, malformed lines named with file and line."""

from __future__ import annotations

import json

import pytest

from orchestrator.data.records import read_preferences, read_sft
from workloads.errors import UserInputError


def jsonl(tmp_path, *records, name="records.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_sft_records_in_both_forms(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    records = read_sft(jsonl(tmp_path, {"prompt": "2+2=", "response": "4"}, {"messages": messages}))
    assert (records[0].prompt, records[0].responses) == ("2+2=", ["4"])
    assert records[1].prompt == "### System:\nBe brief.\n### User:\nHi\n### Assistant:\n"
    assert records[1].responses == ["Hello"]


def test_a_ranking_becomes_every_pair_it_orders(tmp_path):
    path = jsonl(
        tmp_path,
        {"prompt": "p", "responses": ["b", "a", "c"], "ranking": [1, 0, 2]},
        {"prompt": "q", "chosen": "x", "rejected": "y"},
    )
    pairs = [(r.prompt, *r.responses) for r in read_preferences(path)]
    assert pairs == [("p", "a", "b"), ("p", "a", "c"), ("p", "b", "c"), ("q", "x", "y")]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "p", "response": ', ":2: not valid JSON"),
        ('{"prompt": "p"}', ":2: missing field 'response'"),
        ('{"prompt": 3, "response": "r"}', ":2: field 'prompt' must be a string"),
        ('["p", "r"]', ":2: a record must be a JSON object"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', ":2: messages: the last message must be the assistant's"),
    ],
)
def test_bad_sft_records_name_file_and_line(tmp_path, line, message):
    path = jsonl(tmp_path, {"prompt": "ok", "response": "ok"}, line)
    with pytest.raises(UserInputError) as caught:
        read_sft(path)
    assert str(caught.value) == f"{path}{message}" or str(caught.value).startswith(f"{path}{message}")


def test_a_ranking_that_does_not_match_its_responses_is_refused(tmp_path):
    path = jsonl(tmp_path, {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 2]})
    with pytest.raises(UserInputError, match=r":1: ranking \[0, 2\] is not an order of the 3 responses"):
        read_preferences(path)
