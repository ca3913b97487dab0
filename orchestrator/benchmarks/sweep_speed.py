"""The sweep section: a small scaling-law sweep filling the machine against its longest trial run alone."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from orchestrator.benchmarks.harness import WARMUP_STEPS, say, start_ray, step_times_from_metrics, tracking_uri
from orchestrator.config.parser import tree_from_dict
from orchestrator.scaling_laws import sweep
from orchestrator.scaling_laws.trial_records import read_record
from orchestrator.stages.pretrain import PRETRAIN, PretrainConfig
from workloads.errors import UserInputError
from workloads.metrics_log import METRICS_FILE
from workloads.reference_loop import steady_tokens_per_s

# The sweep measured: the cpu sweep recipe cut to 2 budgets x 3 sizes (6 trials of 520-2790 steps,
# 3 sizes at 1e12 and 2e12 FLOPs), no verification run (it trains alone, after the grid), no bootstrap.
SWEEP_RECIPE = "cpu"
SWEEP_OVERRIDES = (
    "--sweep.budgets=[1.0e+12, 2.0e+12]",
    "--sweep.sizes_per_budget=3",
    "--sweep.verify=false",
    "--sweep.bootstrap=0",
)


def measure_sweep(workdir: Path) -> dict[str, Any]:
    """A small scaling-law sweep filling the machine, then its longest trial's config alone.

    Both runs' steady tokens/s come from their own metrics.jsonl (warm-up steps left out),
    with the same evaluation and checkpoint cadence, the same threads and the same CPUs
    reserved. The sweep's utilization is its own account (orchestrator.scaling_laws.sweep_summary).
    """
    name = "bench-sweep"
    argv = [
        "--config",
        SWEEP_RECIPE,
        f"--run.name={name}",
        f"--run.output_dir={workdir / 'sweep-runs'}",
        f"--tracking.uri={tracking_uri(workdir)}",
        *SWEEP_OVERRIDES,
    ]
    shutil.rmtree(workdir / "sweep-runs" / name, ignore_errors=True)  # a whole sweep every time, nothing read back
    started = time.perf_counter()
    try:
        sweep.run(*sweep.parse_cli(argv))
    except UserInputError as err:  # a grid this small may not fit a law: the timings are what is measured here
        if not str(err).startswith("sweep: trials done"):
            raise
        say(f"sweep: {err}")
    wall = time.perf_counter() - started
    sweep_dir = workdir / "sweep-runs" / name
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    longest = max((t for t in summary["trials"] if t["kind"] == "grid"), key=lambda t: t["steps"])
    trial_dir = sweep_dir / "trials" / longest["name"]
    record = read_record(trial_dir)
    tokens_step = summary["tokens_per_step"]
    in_sweep = steady_tokens_per_s(step_times_from_metrics(trial_dir / METRICS_FILE)[1:], tokens_step, WARMUP_STEPS)
    say(f"sweep: {longest['name']} trained at {in_sweep:,.0f} tok/s in the sweep; now the same config alone")
    run = {**record["config"]["run"], "name": "bench-sweep-alone", "output_dir": str(workdir / "runs"), "fresh": True}
    cfg = tree_from_dict(PretrainConfig, {**record["config"], "run": run})
    PRETRAIN.run(cfg)
    alone = steady_tokens_per_s(
        step_times_from_metrics(cfg.run.run_dir() / METRICS_FILE)[1:], tokens_step, WARMUP_STEPS
    )
    usage = summary["utilization"]
    return {
        "sweep_trial_vs_pretrain": in_sweep / alone,
        "sweep_utilization": usage["utilization"],
        "details": {
            "recipe": SWEEP_RECIPE,
            "overrides": list(SWEEP_OVERRIDES),
            "trials": len(summary["trials"]),
            "wall_s": wall,
            "trial_wall_s": usage["wall_s"],
            "cluster_cpus": usage["cluster_cpus"],
            "launch_share": usage["launch_share"],
            "measured_trial": longest["name"],
            "steps": longest["steps"],
            "trial_tokens_per_s_in_sweep": in_sweep,
            "trial_tokens_per_s_alone": alone,
            "launch_s_per_trial": [
                r["timing"]["launch_s"] for r in map(read_record, sweep_dir.glob("trials/*")) if r and r.get("timing")
            ],
        },
    }


def run(bench) -> None:
    """The sweep section: sweep_trial_vs_pretrain and sweep_utilization."""
    start_ray()
    say(f"sweep: the {SWEEP_RECIPE} sweep recipe, {' '.join(SWEEP_OVERRIDES)}")
    measured = measure_sweep(bench.workdir)
    bench.report.update({k: measured[k] for k in ("sweep_trial_vs_pretrain", "sweep_utilization")})
    bench.details["sweep"] = measured["details"]
    say(
        f"sweep: trial {measured['sweep_trial_vs_pretrain']:.3f} of its speed alone; utilization "
        f"{measured['sweep_utilization']:.1%}, launching {measured['details']['launch_share']:.1%}"
    )
