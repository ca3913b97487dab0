"""Scaling-law fits recover published laws from synthetic IsoFLOP sweeps; the CLI refuses bad files.

Each sweep is drawn from a published law (Chinchilla's, Epoch AI's) the way a real
one is run: 5 compute budgets a factor ~3 apart, 14 log-spaced model sizes per
budget centred on the "20 tokens per parameter" guess N = sqrt(C / 120), D = C / (6 N),
and 0.5% multiplicative noise on the loss. Held-out points come from other budgets
and are compared with the noiseless law.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.scaling_laws.fit import (
    CHINCHILLA,
    EPOCH,
    LossLaw,
    _huber_objective,
    fit_isoflop,
    fit_law,
    fit_sweep,
    group_budgets,
)
from orchestrator.scaling_laws.points import Points, read_points_csv
from tests.helpers import REPO
from workloads.errors import UserInputError

BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)
SIZES_PER_BUDGET = 14
SPAN = 20.0  # sizes run from 1/20 to 20 times the guess: 2.6 decades of N per budget
NOISE = 0.005
LAWS = {"chinchilla": (CHINCHILLA, 2022), "epoch": (EPOCH, 2024)}  # law, seed of its sweep's noise


def isoflop_sweep(
    law: LossLaw, rng: np.random.Generator, budgets=BUDGETS, sizes=SIZES_PER_BUDGET, span=SPAN, noise=NOISE
) -> Points:
    N = np.concatenate([np.geomspace(np.sqrt(C / 120) / span, np.sqrt(C / 120) * span, sizes) for C in budgets])
    C = np.repeat(np.asarray(budgets, dtype=float), sizes)
    D = C / (6 * N)
    loss = law.loss(N, D) * np.exp(noise * rng.standard_normal(len(N)))
    return Points.from_arrays(N, D, loss, C)


def held_out(law: LossLaw) -> tuple[Points, np.ndarray]:
    """Noiseless points on budgets between the sweep's, off its size grid: (points, true loss)."""
    points = isoflop_sweep(law, np.random.default_rng(0), budgets=(2e18, 5e19), sizes=7, span=8.0, noise=0.0)
    return points, points.loss


@pytest.fixture(scope="module", params=sorted(LAWS))
def fitted(request):
    law, seed = LAWS[request.param]
    points = isoflop_sweep(law, np.random.default_rng(seed))
    return law, fit_sweep(points, bootstrap=200, seed=seed)


def test_true_optimum_inside_every_budgets_sizes():
    for law, _ in LAWS.values():
        for C in BUDGETS:
            N_opt, _ = law.optimal_allocation(C)
            guess = np.sqrt(C / 120)
            assert guess / SPAN * 3 < N_opt < guess * SPAN / 3, (law, C)  # at least a factor 3 from either end


def test_fit_recovers_the_law(fitted):
    law, fits = fitted
    estimates = fits.parameters()
    for name in ("alpha", "beta"):
        truth = getattr(law, name)
        assert estimates[name].value == pytest.approx(truth, rel=0.03), name
    true_a, true_b = law.exponents
    assert estimates["a"].value == pytest.approx(true_a, abs=0.03)
    assert estimates["b"].value == pytest.approx(true_b, abs=0.03)
    for name, estimate in estimates.items():
        lo, hi = estimate.ci
        assert lo <= estimate.value <= hi, name
    assert len(fits.law_samples) == 200 and len(fits.isoflop_samples) == 200
    assert all(curve.inside for curve in fits.isoflop.curves)


def test_held_out_points_predicted_within_one_percent(fitted):
    law, fits = fitted
    points, truth = held_out(law)
    predicted = np.array([fits.predict(n, d).value for n, d in zip(points.N, points.D)])
    assert np.abs(predicted / truth - 1).max() < 0.01


def test_allocation_follows_the_fitted_power_law(fitted):
    law, fits = fitted
    N_opt, D_opt = fits.allocation(1e21)
    true_N, true_D = law.optimal_allocation(1e21)
    assert N_opt.ci[0] < N_opt.value < N_opt.ci[1] and D_opt.ci[0] < D_opt.value < D_opt.ci[1]
    assert N_opt.value == pytest.approx(true_N, rel=0.25)  # a decade beyond the sweep
    assert D_opt.value == pytest.approx(true_D, rel=0.25)


def test_huber_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    points = isoflop_sweep(EPOCH, rng)
    x, y = np.log(points.N) - 20, np.log(points.D) - 21
    theta = np.array([0.5, 6.0, 7.0, 0.4, 0.3])
    _, grad = _huber_objective(theta, x, y, np.log(points.loss), 1e-3)
    step = 1e-6
    numeric = [
        (
            _huber_objective(theta + step * e, x, y, np.log(points.loss), 1e-3)[0]
            - _huber_objective(theta - step * e, x, y, np.log(points.loss), 1e-3)[0]
        )
        / (2 * step)
        for e in np.eye(5)
    ]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5)


def test_budgets_grouped_despite_steps_rounding_tokens():
    N = np.geomspace(1e7, 1e9, 10)
    tokens_per_step = 2**20
    D = np.round(1e19 / (6 * N) / tokens_per_step) * tokens_per_step  # whole optimizer steps
    labels = group_budgets(np.concatenate([6 * N * D, 3 * 6 * N * D]))
    assert sorted(set(labels)) == [0, 1] and len(set(labels[:10])) == 1


def test_sweeps_that_cannot_be_fitted_say_why():
    points = isoflop_sweep(CHINCHILLA, np.random.default_rng(0), budgets=(1e19,))
    with pytest.raises(UserInputError, match="1 compute budget"):
        fit_isoflop(points)
    points = isoflop_sweep(CHINCHILLA, np.random.default_rng(0), sizes=2)
    with pytest.raises(UserInputError, match="2 distinct sizes"):
        fit_isoflop(points)
    with pytest.raises(UserInputError, match="needs at least 6"):
        fit_law(points.take(np.arange(5)))
    N = np.tile(np.geomspace(1e7, 1e9, 5), 2)
    C = np.repeat([1e18, 1e19], 5)
    concave = Points.from_arrays(N, C / (6 * N), 3 - 0.01 * np.log(N / 1e8) ** 2, C, source="concave.csv")
    with pytest.raises(UserInputError, match=r"^concave.csv: loss does not curve upward .* budget C=1e\+18, C=1e\+19"):
        fit_isoflop(concave)


# ---------------------------------------------------------------- the CLI, as a user runs it


def run_fit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.scaling", "fit", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_cli_prints_every_parameter_and_a_prediction(tmp_path):
    points = isoflop_sweep(EPOCH, np.random.default_rng(7))
    # no C column: the CLI uses 6 N D
    csv = write_csv(
        tmp_path / "points.csv",
        "N,D,loss,note",
        [f"{n!r},{d!r},{loss!r},x" for n, d, loss in zip(points.N.tolist(), points.D.tolist(), points.loss.tolist())],
    )
    assert len(read_points_csv(csv)) == len(points)
    result = run_fit(str(csv), "--predict", "1e9,2e10", "--bootstrap", "50", "--seed", "3")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"E", "A", "B", "alpha", "beta", "a", "b"} <= set(out)
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lo, hi = out[name]["ci"]
        assert lo <= out[name]["value"] <= hi
    assert out["n_points"] == 70 and len(out["budgets"]) == 5
    prediction = out["prediction"]
    assert (prediction["N"], prediction["D"]) == (1e9, 2e10)
    lo, hi = prediction["loss"]["ci"]
    assert lo <= prediction["loss"]["value"] <= hi
    assert prediction["loss"]["value"] == pytest.approx(EPOCH.loss(1e9, 2e10), rel=0.01)


GOOD_ROWS = [f"{n},{1e19 / (6 * n)},{3.0 + abs(np.log(n / 1e8)) * 0.1}" for n in (3e7, 1e8, 3e8)]


@pytest.mark.parametrize(
    "header, rows, message",
    [
        ("N,tokens,loss", GOOD_ROWS, "missing column(s) D"),
        ("N,D,loss", ["1e8,2e9,abc"], "line 2, column loss: not a number: 'abc'"),
        ("N,D,loss", ["1e8,-2e9,3.1"], "line 2, column D: must be a positive finite number, got -2e9"),
        ("N,D,loss", ["0,2e9,3.1"], "line 2, column N: must be a positive finite number"),
        ("N,D,loss", [], "no data rows"),
        ("N,D,loss", GOOD_ROWS, "1 compute budget(s)"),
        (
            "N,D,C,loss",
            ["1e8,2e9,1e18,3.1", "2e8,1e9,1e18,3.0", "3e8,1e10,1e19,2.9", "1e9,3e9,1e19,2.8"],
            "2 distinct sizes",
        ),
    ],
)
def test_cli_refuses_a_bad_file_in_one_line(tmp_path, header, rows, message):
    csv = write_csv(tmp_path / "bad.csv", header, rows)
    result = run_fit(str(csv))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {csv}: ")
    assert message in result.stderr


def test_cli_refuses_a_missing_file_and_a_bad_prediction(tmp_path):
    result = run_fit(str(tmp_path / "nowhere.csv"))
    assert result.returncode == 2 and result.stderr == f"error: {tmp_path / 'nowhere.csv'}: no such file\n"
    result = run_fit(str(tmp_path / "nowhere.csv"), "--predict", "1e9")
    assert result.returncode == 2 and result.stderr.startswith("error: --predict: expected N,D")
