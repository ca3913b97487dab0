"""The bench's goals, the table of what it measured against them, and signs of a busy machine."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.benchmarks.harness import BENCH_CPUS

# key: (comparison the measured value must pass, goal)
GOALS = {
    "pretrain_vs_bare_ratio": (">=", 0.95),
    "pretrain_vs_gpt2_bare": (">=", 0.95),
    "loader_vs_consumption": (">=", 50.0),
    "loader_vs_memcpy": (">=", 0.5),
    "prepare_vs_single_core": (">=", 0.8),
    "prepare_driver_rss_growth": ("<=", 1.2),
    "first_step_s": ("<=", 15.0),
    "generate_cache_speedup": (">=", 5.0),
    "generate_vs_transformers": (">=", 1.0),
    "sweep_trial_vs_pretrain": (">=", 0.9),
    "sweep_utilization": (">=", 0.7),
    "quality_bpb": ("<", 2.72),  # beat nanoGPT's baby GPT (orchestrator.benchmarks.quality)
}
_COMPARE = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}
REPORTED = ("rl_generation_share", "rl_sync_s")  # measured and shown, no goal


def meets_goal(key: str, value: float) -> bool | None:
    if key not in GOALS:
        return None
    comparison, goal = GOALS[key]
    return _COMPARE[comparison](float(value), goal)


def table(report: dict[str, Any]) -> str:
    lines = [f"{'measure':<26}{'value':>14}  {'goal':<10}met", "-" * 56]
    for key in [*GOALS, *REPORTED, "quality_flops", "quality_wall_s"]:
        if key not in report:
            continue
        value = report[key]
        goal = ""
        if key in GOALS:
            goal = f"{GOALS[key][0]} {GOALS[key][1]:g}"
        met = meets_goal(key, value)
        shown = f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
        lines.append(f"{key:<26}{shown:>14}  {goal:<10}{'' if met is None else ('yes' if met else 'NO')}")
    if "gpu" in report:
        lines.append(f"{'gpu':<26}{json.dumps(report['gpu'])[:200]}")
    return "\n".join(lines)


def busy_machine_warnings(report: dict[str, Any]) -> list[str]:
    """Signs that other work on the machine disturbed the timings."""
    warnings = []
    cpus = report["cpus_on_machine"] or BENCH_CPUS
    load = report["load_average_at_start"][0]  # later ones include this bench's own work
    if load > 0.5 * cpus:
        warnings.append(
            f"the 1-minute load average was {load:.1f} on {cpus} CPUs before the bench started: "
            "other work disturbs the timings, compare runs on a quiet machine"
        )
    spread = report["details"].get("throughput", {}).get("bare_spread", 0.0)
    if spread > 0.05:
        warnings.append(
            f"the bare loop ran {100 * spread:.0f}% faster or slower after the real path than before: "
            "the machine's speed changed during the measurement"
        )
    return warnings
