"""The fine-tuning stages' packed rows: response-only targets, examples kept apart, preference targets."""

from __future__ import annotations

import numpy as np

from workloads.stages.datasets import (
    IGNORED_TARGET,
    Example,
    PreferenceSplit,
    SFTSplit,
    pack_sft,
    pad_preferences,
    write_dataset,
)

EOS = 1


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
