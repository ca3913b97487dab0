"""`python -m orchestrator.report SWEEP_DIR`: the report of a scaling-law sweep.

Reads SWEEP_DIR/trials.json, a JSON list of trial records (the fields of
`orchestrator.scaling.Trial`; failed trials included), and SWEEP_DIR/verify.json
when there is one (a single trial record: a run trained at a recommended size).
Fits both scaling laws to the successful trials and writes SWEEP_DIR/report/:
report.md with its PNG plots, report.html (self-contained) and points.csv (the
fitted points, for `python -m orchestrator.scaling fit`).

Only directories are read here. A sweep kept elsewhere, such as an MLflow run, is
reported by the code that resolves it: it fetches the run's trials.json (and
verify.json) into a directory and calls `report_sweep` on that directory.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.config import run_cli
from orchestrator.scaling import Points, Trial, read_trials, write_points_csv
from orchestrator.scaling.fit import fit_sweep
from orchestrator.scaling.report import ReportFiles, write_report
from workloads.errors import UserInputError

TRIALS_FILE = "trials.json"
VERIFY_FILE = "verify.json"
REPORT_DIR = "report"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help=f"a sweep directory holding {TRIALS_FILE}")
    parser.add_argument("--target-flops", type=float, help="compute budget to recommend N and D for (default: 10x the largest budget)")
    parser.add_argument("--n-label", default="non-embedding parameters",
                        help="what the trials' N counts, as the report should say it")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="K", help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    return parser.parse_args(argv)


def read_verify(path: Path) -> Trial | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}") from None
    return Trial.from_dict(record, str(path))


def report_sweep(sweep_dir: Path, target_flops: float | None = None, n_label: str = "non-embedding parameters",
                 bootstrap: int = 200, seed: int = 0) -> ReportFiles:
    """Fit and report the sweep in `sweep_dir` into `sweep_dir/report/`."""
    if not sweep_dir.is_dir():
        raise UserInputError(f"{sweep_dir}: no such directory")
    if target_flops is not None and not target_flops > 0:
        raise UserInputError(f"--target-flops: must be positive, got {target_flops}")
    if bootstrap < 0:
        raise UserInputError(f"--bootstrap: must be 0 or more, got {bootstrap}")
    trials_path = sweep_dir / TRIALS_FILE
    trials = read_trials(trials_path)
    verify = read_verify(sweep_dir / VERIFY_FILE)
    fits = fit_sweep(Points.from_trials(trials, source=str(trials_path)), bootstrap=bootstrap, seed=seed)
    out_dir = sweep_dir / REPORT_DIR
    out_dir.mkdir(exist_ok=True)
    write_points_csv(trials, out_dir / "points.csv")
    return write_report(sweep_dir, trials, fits, out_dir, target_flops=target_flops, verify=verify, n_label=n_label)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    files = report_sweep(args.sweep_dir, args.target_flops, args.n_label, args.bootstrap, args.seed)
    print(f"report: {files.markdown}\nreport: {files.html}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
