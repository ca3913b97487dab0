"""`python -m orchestrator.report SWEEP`: the report of a scaling-law sweep.

SWEEP is a sweep directory or the MLflow run id of a sweep's parent run (its
artifacts are downloaded into a new temporary directory, which is then reported).

Reads SWEEP/trials.json, a JSON list of trial records (the fields of
`orchestrator.scaling_laws.points.Trial`; failed trials included), and SWEEP/verify.json
when there is one (a single trial record: a run trained at a recommended size).
Fits both scaling laws to the successful trials and writes SWEEP/report/:
report.md with its PNG plots, report.html (self-contained) and points.csv (the
fitted points, for `python -m orchestrator.scaling fit`). When SWEEP/sweep.json
is there (written by `orchestrator.sweep`), the sweep's own sections follow:
its trials, the fit with N counting the output head, the learning-rate search,
the schedules' compute and the cluster's utilization.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.config.parser import run_cli
from orchestrator.scaling_laws.sweep_report import MLFLOW_RUN_ID, TRIALS_FILE, fetch_mlflow_sweep, report_sweep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep", help=f"a sweep directory holding {TRIALS_FILE}, or the MLflow run id of a sweep's parent run"
    )
    parser.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI for a run id (default: $MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db in the working directory)",
    )
    parser.add_argument(
        "--target-flops", type=float, help="compute budget to recommend N and D for (default: 10x the largest budget)"
    )
    parser.add_argument(
        "--n-label", default="non-embedding parameters", help="what the trials' N counts, as the report should say it"
    )
    parser.add_argument("--bootstrap", type=int, default=200, metavar="K", help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sweep_dir = Path(args.sweep)
    if not sweep_dir.exists() and MLFLOW_RUN_ID.fullmatch(args.sweep):
        sweep_dir = fetch_mlflow_sweep(args.sweep, args.tracking_uri)
        print(f"report: MLflow run {args.sweep}'s trials fetched into {sweep_dir}")
    files = report_sweep(sweep_dir, args.target_flops, args.n_label, args.bootstrap, args.seed)
    print(f"report: {files.markdown}\nreport: {files.html}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
