"""The bench's table against its goals, and its warnings of a busy machine."""

from __future__ import annotations

import json

from orchestrator.benchmarks.goals import busy_machine_warnings, meets_goal, table


def test_report_table_and_goals():
    report = {
        "pretrain_vs_bare_ratio": 0.97,
        "first_step_s": 20.0,
        "quality_flops": 7.89e12,
        "gpu": {"skipped": "no CUDA device is present"},
        "details": {},
    }
    assert meets_goal("pretrain_vs_bare_ratio", 0.97) and not meets_goal("first_step_s", 20.0)
    assert meets_goal("quality_flops", 1.0) is None
    lines = table(report).splitlines()
    assert any(line.startswith("pretrain_vs_bare_ratio") and line.endswith("yes") for line in lines)
    assert any(line.startswith("first_step_s") and line.endswith("NO") for line in lines)
    assert any("skipped" in line for line in lines)
    json.dumps(report)


def test_busy_machine_is_reported():
    quiet = {
        "cpus_on_machine": 2,
        "load_average_at_start": [0.1, 0.2, 0.3],
        "details": {"throughput": {"bare_spread": 0.01}},
    }
    assert busy_machine_warnings(quiet) == []
    busy = {
        "cpus_on_machine": 2,
        "load_average_at_start": [3.0, 2.0, 1.0],
        "details": {"throughput": {"bare_spread": 0.2}},
    }
    assert len(busy_machine_warnings(busy)) == 2
