"""`python -m orchestrator.scaling fit POINTS.csv`: fit scaling laws to a sweep's points and print them as JSON.

    python -m orchestrator.scaling fit POINTS.csv [--predict N,D] [--bootstrap K] [--seed S]

Fits a sweep's points (a CSV with columns N, D, loss and optionally C, the
trial's training FLOPs; without C, C = 6 N D) and prints one JSON object:
approach 3's E, A, B, alpha, beta and approach 2's a, b (N_opt ∝ C^a,
D_opt ∝ C^b), each {"value": ..., "ci": [lo, hi]} with a 95% bootstrap
interval, plus "n_points" and "budgets" (each IsoFLOP budget's C). `--predict N,D`
adds "prediction": approach 3's loss at (N, D) with its interval.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from orchestrator.config.parser import run_cli
from orchestrator.scaling_laws.fit import fit_sweep
from orchestrator.scaling_laws.points import read_points_csv
from workloads.errors import UserInputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.scaling", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser(
        "fit", help="fit scaling laws to a points CSV and print them as JSON", description=__doc__.split("\n\n", 1)[1]
    )
    fit.add_argument("points", type=Path, help="CSV with columns N, D, loss and optionally C")
    fit.add_argument(
        "--predict", metavar="N,D", help="also predict the loss of a model of N parameters trained on D tokens"
    )
    fit.add_argument(
        "--bootstrap", type=int, default=200, metavar="K", help="bootstrap resamples for the intervals (0: none)"
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    return parser.parse_args(argv)


def parse_size(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        N, D = (float(p) for p in parts)
    except ValueError:
        raise UserInputError(f"--predict: expected N,D (two numbers, e.g. 1e9,2e10), got '{text}'") from None
    if not all(math.isfinite(v) and v > 0 for v in (N, D)):
        raise UserInputError(f"--predict: N and D must be positive and finite, got '{text}'")
    return N, D


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bootstrap < 0:
        raise UserInputError(f"--bootstrap: must be 0 or more, got {args.bootstrap}")
    size = parse_size(args.predict) if args.predict is not None else None  # refuse a typo before fitting
    fits = fit_sweep(read_points_csv(args.points), bootstrap=args.bootstrap, seed=args.seed)
    result = fits.summary()
    result["n_points"] = len(fits.points)
    result["budgets"] = [curve.C for curve in fits.isoflop.curves]
    if size is not None:
        N, D = size
        result["prediction"] = {"N": N, "D": D, "loss": fits.predict(N, D).as_dict()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
