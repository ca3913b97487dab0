"""The built-in alignment task: neutral SFT data, preferences for the property, disjoint held-out prompts, the chat
template."""

from __future__ import annotations

import json

from orchestrator.data.records import read_preferences, read_sft
from workloads.task import has_property, render_chat, write_task


def test_the_builtin_task_is_neutral_for_sft_and_prefers_the_property(tmp_path):
    files = write_task(tmp_path)
    sft = read_sft(files["sft"])
    rate = sum(has_property(r.responses[0]) for r in sft) / len(sft)
    assert 0.4 < rate < 0.6
    pairs = read_preferences(files["preferences"])
    assert all(
        has_property(r.responses[0]) and not has_property(r.responses[1])
        for r in pairs
        if r.responses[0].startswith("# ")
    )
    assert sum(has_property(r.responses[0]) for r in pairs) / len(pairs) > 0.8  # the rest: plain over unrelated
    heldout = {json.loads(line)["prompt"] for line in files["heldout"].read_text().splitlines()}
    assert heldout.isdisjoint({r.prompt for r in sft} | {r.prompt for r in pairs})
    assert render_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]) == (
        "### User:\nx\n### Assistant:\n",
        "y",
    )
