"""Fine-tuning data: record formats, the chat template, packing with response-only targets, the built-in task."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orchestrator.stage_data import read_preferences, read_sft, split_by_prompt, tokenize
from workloads.errors import UserInputError
from workloads.model import GPT, ModelConfig, ScalarHeadModel, token_logprobs
from workloads.stages.datasets import (
    IGNORED_TARGET,
    Example,
    PreferenceSplit,
    SFTSplit,
    pack_sft,
    pad_preferences,
    write_dataset,
)
from workloads.task import has_property, render_chat, write_task
from workloads.tokenizer import Tokenizer

EOS = 1


def jsonl(tmp_path, *records, name="records.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_sft_records_in_both_forms(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}]
    records = read_sft(jsonl(tmp_path, {"prompt": "2+2=", "response": "4"}, {"messages": messages}))
    assert (records[0].prompt, records[0].responses) == ("2+2=", ["4"])
    assert records[1].prompt == "### System:\nBe brief.\n### User:\nHi\n### Assistant:\n"
    assert records[1].responses == ["Hello"]


def test_a_ranking_becomes_every_pair_it_orders(tmp_path):
    path = jsonl(tmp_path, {"prompt": "p", "responses": ["b", "a", "c"], "ranking": [1, 0, 2]},
                 {"prompt": "q", "chosen": "x", "rejected": "y"})
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


def test_sft_packing_scores_response_tokens_only_and_keeps_examples_apart(tmp_path):
    examples = [Example([5, 6], [7, 8, 9]), Example([10], [11]), Example([12, 13, 14], [15, 16])]
    packed = pack_sft(examples, seq_len=11, eos_id=EOS)  # rows of 12: [1 5 6 7 8 9 1 | 1 10 11 1], [1 12 ...]
    assert packed["tokens"].shape == (2, 12)
    assert packed["tokens"][0].tolist() == [1, 5, 6, 7, 8, 9, 1, 1, 10, 11, 1, 0]
    write_dataset(tmp_path, "sft", {"train": packed, "val": packed}, {"seq_len": 11, "dataset_hash": "x"}, b"model")
    inputs, segments, targets = SFTSplit(tmp_path, "train").get(np.array([0, -1]))
    # Row 0 predicts 7 8 9 </s> of example 0 and 11 </s> of example 1; nothing else is scored.
    assert targets[0].tolist() == [-100, -100, 7, 8, 9, 1, -100, -100, 11, 1, -100]
    assert (targets[1] == IGNORED_TARGET).all()  # a padding slot scores nothing
    assert len(set(segments[0, :7].tolist())) == 1 and segments[0, 7] != segments[0, 6]
    assert packed["segments"][0, 11] not in packed["segments"][0, :11]  # padding joins no example


def test_preference_targets_cover_each_response_and_its_end(tmp_path):
    padded = pad_preferences([Example([5, 6], [7, 8], [9])], seq_len=8, eos_id=EOS)
    write_dataset(tmp_path, "preference", {"train": padded, "val": padded}, {"seq_len": 8, "dataset_hash": "x"}, b"m")
    batch = PreferenceSplit(tmp_path, "train").get(np.array([0]))
    assert batch["chosen"][0].tolist() == [1, 5, 6, 7, 8, 1, 0, 0] and batch["chosen_last"].tolist() == [5]
    assert batch["chosen_targets"][0].tolist() == [-100, -100, 7, 8, 1, -100, -100, -100]
    assert batch["rejected_targets"][0].tolist() == [-100, -100, 9, 1, -100, -100, -100, -100]


def test_split_by_prompt_keeps_a_prompts_pairs_together(tmp_path):
    records = read_preferences(jsonl(tmp_path, *[{"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]}
                                                 for i in range(200)]))
    train, val = split_by_prompt(records, 0.1, seed=3)
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in val})
    assert 0.04 < len(val) / len(records) < 0.2
    assert split_by_prompt(records, 0.1, seed=3) == (train, val)


def test_the_builtin_task_is_neutral_for_sft_and_prefers_the_property(tmp_path):
    files = write_task(tmp_path)
    sft = read_sft(files["sft"])
    rate = sum(has_property(r.responses[0]) for r in sft) / len(sft)
    assert 0.4 < rate < 0.6
    pairs = read_preferences(files["preferences"])
    assert all(has_property(r.responses[0]) and not has_property(r.responses[1])
               for r in pairs if r.responses[0].startswith("# "))
    assert sum(has_property(r.responses[0]) for r in pairs) / len(pairs) > 0.8  # the rest: plain over unrelated
    heldout = {json.loads(line)["prompt"] for line in files["heldout"].read_text().splitlines()}
    assert heldout.isdisjoint({r.prompt for r in sft} | {r.prompt for r in pairs})
    assert render_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]) == (
        "### User:\nx\n### Assistant:\n", "y")


def test_a_scalar_head_reads_the_last_real_token_whatever_follows():
    torch.manual_seed(0)
    model = ScalarHeadModel(GPT(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=12))).eval()
    ids = torch.randint(2, 32, (1, 6))
    padded = torch.cat((ids, torch.zeros(1, 4, dtype=torch.long)), dim=1)
    assert torch.allclose(model(ids, torch.tensor([5])), model(padded, torch.tensor([5])), atol=1e-6)


def test_token_logprobs_pick_the_targets_and_skip_ignored_positions():
    logits = torch.randn(2, 3, 7)
    targets = torch.tensor([[1, -100, 3], [0, 6, -100]])
    picked = token_logprobs(logits, targets)
    expected = torch.log_softmax(logits, -1)
    assert picked[0, 0] == expected[0, 0, 1] and picked[0, 1] == 0 and picked[1, 1] == expected[1, 1, 6]
