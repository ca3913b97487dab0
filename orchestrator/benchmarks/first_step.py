"""The first-step section: a user's `python -m orchestrator.pretrain`, launch to its first step line, cold."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from orchestrator.benchmarks.harness import say, stop_ray, throughput_args

# Lines of the pretrain output that mark its phases, in order.
FIRST_STEP_MARKS = (
    ("ray_started", re.compile(r"^pretrain: (local Ray|cluster at|already)")),
    ("tracking_ready", re.compile(r"^pretrain: run '")),
    ("workers_started", re.compile(r"Started training worker group")),
    ("engine_ready", re.compile(r"training (from scratch|resumed)")),
    ("first_step", re.compile(r"\bstep 1/\d+ \|")),
)
FIRST_STEP_COLD_RUNS = 2


def measure_first_step(
    dataset_dir: Path, workdir: Path, extensions_dir: Path, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Seconds from launching the pretrain CLI (dataset prepared) to its first step line, and its phases.

    A fresh process that starts its own local Ray, as on a laptop. DeepSpeed JIT-builds its CPU ops
    (the shared-memory comm op) into `extensions_dir` ($TORCH_EXTENSIONS_DIR) the first time and loads
    them from there afterwards.
    """
    command = [
        sys.executable,
        "-m",
        "orchestrator.pretrain",
        *throughput_args(dataset_dir, workdir, "bench-first-step", 2),
        "--train.log_interval=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, as on a laptop
    marks: dict[str, float] = {}
    tail: list[str] = []
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )
    watchdog = threading.Timer(timeout_s, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            now = time.perf_counter() - started
            tail = (tail + [line.rstrip()])[-20:]
            for name, pattern in FIRST_STEP_MARKS:
                if name not in marks and pattern.search(line):
                    marks[name] = now
        status = process.wait()
    finally:
        watchdog.cancel()
    if "first_step" not in marks:
        raise RuntimeError(
            f"pretrain exited with status {status} before its first step line; last lines:\n" + "\n".join(tail)
        )
    return {
        "first_step_s": marks["first_step"],
        "details": {"phases_s": marks, "exit_status": status, "load_average_at_launch": load},
    }


def measure_first_steps(dataset_dir: Path, workdir: Path, cold_runs: int = FIRST_STEP_COLD_RUNS) -> dict[str, Any]:
    """The very first launch (an empty torch extensions directory: it builds DeepSpeed's CPU ops), then
    `cold_runs` cold launches with those ops built; first_step_s is the lowest cold one."""
    extensions_dir = workdir / "first-step-torch-extensions"
    shutil.rmtree(extensions_dir, ignore_errors=True)
    runs = []
    for attempt in range(1 + cold_runs):
        kind = "first launch, building DeepSpeed's CPU ops" if attempt == 0 else f"cold launch {attempt}/{cold_runs}"
        measured = measure_first_step(dataset_dir, workdir, extensions_dir)
        phases = measured["details"]["phases_s"]
        say(
            f"first step: {kind}: "
            + ", ".join(f"{name} {phases[name]:.1f}" for name, _ in FIRST_STEP_MARKS if name in phases)
            + f" s (load average {measured['details']['load_average_at_launch']:.1f})"
        )
        runs.append(measured)
    build, cold = runs[0], runs[1:]
    best = min(cold, key=lambda run: run["first_step_s"])
    return {
        "first_step_s": best["first_step_s"],
        "first_step_build_s": build["first_step_s"],
        "details": {**best["details"], "cold_runs": [run["details"] for run in cold], "first_build": build["details"]},
    }


def run(bench) -> None:
    """The first-step section: first_step_s (and first_step_build_s)."""
    dataset_dir = bench.dataset()
    stop_ray()  # the CLI starts its own Ray, as it does for a user
    say("first step: python -m orchestrator.pretrain on the prepared dataset (phases in seconds since launch)")
    measured = measure_first_steps(dataset_dir, bench.workdir)
    bench.report["first_step_s"] = measured["first_step_s"]
    bench.report["first_step_build_s"] = measured["first_step_build_s"]
    bench.details["first_step"] = measured["details"]
    say(
        f"first step: {bench.report['first_step_s']:.1f} s cold (lowest of {FIRST_STEP_COLD_RUNS}); "
        f"{bench.report['first_step_build_s']:.1f} s for the first launch, which builds DeepSpeed's CPU ops"
    )
