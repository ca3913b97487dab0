"""The quality section's arithmetic: nanoGPT's byte split and the FLOP budget in steps."""

from __future__ import annotations

import pytest

from orchestrator.benchmarks.quality import NANOGPT_FLOPS, split_bytes, steps_for_budget, training_flops
from orchestrator.stages.pretrain import PRETRAIN
from workloads.errors import UserInputError


def test_split_keeps_exact_bytes_at_nanogpts_cut(tmp_path):
    text = bytes(range(32, 127)) * 11  # 1045 ASCII bytes
    source = tmp_path / "corpus.txt"
    source.write_bytes(text)
    train, val = split_bytes(source, tmp_path / "split")
    assert train.read_bytes() + val.read_bytes() == text
    assert len(train.read_bytes()) == int(len(text) * 0.9)


def test_split_never_cuts_inside_a_utf8_character(tmp_path):
    text = ("a" * 89 + "\u00e9\u4e16" + "b" * 9).encode("utf-8")  # the 90% cut falls inside the 3-byte character
    source = tmp_path / "corpus.txt"
    source.write_bytes(text)
    train, val = split_bytes(source, tmp_path / "split")
    assert train.read_bytes() + val.read_bytes() == text
    assert train.read_bytes().decode("utf-8").endswith("\u00e9") and val.read_bytes().decode("utf-8").startswith(
        "\u4e16"
    )


def test_split_refuses_a_file_too_small(tmp_path):
    (tmp_path / "one.txt").write_bytes(b"x")
    with pytest.raises(UserInputError, match="too small"):
        split_bytes(tmp_path / "one.txt", tmp_path / "split")


def test_flop_budget_gives_the_most_steps_that_fit():
    cfg = PRETRAIN.parse(["--config", "quality"])
    steps = steps_for_budget(cfg, NANOGPT_FLOPS)
    assert training_flops(cfg, steps) <= NANOGPT_FLOPS < training_flops(cfg, steps + 1)
    assert steps == cfg.train.max_steps  # the recipe's own max_steps is the default budget's (see its header)
    with pytest.raises(UserInputError, match="less than one step"):
        steps_for_budget(cfg, 1e6)
