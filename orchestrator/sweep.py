"""`python -m orchestrator.sweep`: a scaling-law sweep of real pretrain runs, fitted and reported.

    python -m orchestrator.sweep --config tiny|cpu|gpu-cluster [--section.field=value ...] [--dry-run]

The sweep prepares the dataset once (under `run.output_dir`, shared by every trial),
designs the grid (`orchestrator.scaling_laws.grid`), trains every trial as a pretrain
run launched by Ray Tune (`orchestrator.scaling_laws.tune_runner`), writes trials.json,
points.csv and the report (`orchestrator.report`), recommends a config for
`sweep.target_flops` as a pretrain recipe file, trains the recommended config at
`sweep.verify_flops` and compares its loss with the fitted law's prediction. One
MLflow parent run holds it all; each trial's own run is its child. Running the same
command again re-runs only what is unfinished. `--dry-run` prints the grid and an
estimated wall time from measured step speeds, and trains nothing.

Layout: <output_dir>/datasets/ (the dataset), <output_dir>/<name>/ (the sweep:
base.yaml, trials.json, points.csv, sweep.json, recommended.yaml, report/, tune/,
and trials/<trial>/, each trial's pretrain run directory).
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.scaling_laws.sweep import parse_cli, run


def main(argv: list[str] | None = None) -> None:
    run(*parse_cli(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
