"""Running the bench's sections in order into one report (the command is `python -m orchestrator.bench`).

Each section is a module of this package with a `run(bench)` that measures, prints its
lines and puts its values in `bench.report` (the goals' keys) and `bench.details`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.benchmarks.goals import busy_machine_warnings
from orchestrator.benchmarks.harness import bench_dataset, say, start_ray, stop_ray
from workloads.errors import UserInputError

# Section name -> its module, in the order they run. A module is imported only when its section
# runs: the gpu section must run where Ray, DeepSpeed and MLflow are not installed.
SECTIONS = {
    "prepare": "orchestrator.benchmarks.preparation",
    "loader": "orchestrator.benchmarks.loader",
    "throughput": "orchestrator.benchmarks.throughput",
    "quality": "orchestrator.benchmarks.quality",
    "first_step": "orchestrator.benchmarks.first_step",
    "generate": "orchestrator.benchmarks.generation",
    "sweep": "orchestrator.benchmarks.sweep_speed",
    "rl": "orchestrator.benchmarks.rl_speed",
    "gpu": "orchestrator.benchmarks.gpu",
}
OPT_IN = ("quality", "gpu")  # run only when asked for (--quality, --gpu or --only)


@dataclass
class Bench:
    """One run of the bench: what it was asked, where it works, what it has measured so far."""

    args: argparse.Namespace
    quality_overrides: list[str]
    workdir: Path
    report: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    _dataset_dir: Path | None = None

    def dataset(self) -> Path:
        """The default recipe's corpus, prepared once per workdir (with a local Ray, left running)."""
        if self._dataset_dir is None:
            start_ray()
            say("prepare: the default recipe's corpus (tokenizer training and packing run only once per workdir)")
            self._dataset_dir = bench_dataset(self.workdir)
        return self._dataset_dir


def chosen_sections(args: argparse.Namespace) -> list[str]:
    """The sections to run, in order; an unknown one, or quality without its text file, is refused."""
    sections = set(args.only.split(",")) if args.only else set(SECTIONS) - set(OPT_IN)
    unknown = sections - set(SECTIONS)
    if unknown:
        raise UserInputError(f"--only: unknown section(s) {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
    if args.quality:
        sections.add("quality")
    if args.gpu:
        sections.add("gpu")
    if "quality" in sections and not args.quality:
        raise UserInputError("--only quality needs --quality TEXTFILE")
    return [name for name in SECTIONS if name in sections]


def run(args: argparse.Namespace, quality_overrides: list[str]) -> dict[str, Any]:
    sections = chosen_sections(args)
    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(
        args,
        quality_overrides,
        workdir,
        {
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cpus_on_machine": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
        },
    )
    say(f"working in {workdir}; load average {bench.report['load_average_at_start']}")
    try:
        for name in sections:
            importlib.import_module(SECTIONS[name]).run(bench)
    finally:
        stop_ray()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report = bench.report
    report["load_average_at_end"] = list(os.getloadavg())
    report["details"] = bench.details
    report["warnings"] = busy_machine_warnings(report)
    return report
