"""The sweep report on a synthetic sweep: files, numbers, failed trials, and `python -m orchestrator.report`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from orchestrator.report import main as report_main
from orchestrator.scaling_laws.fit import CHINCHILLA, fit_sweep
from orchestrator.scaling_laws.points import Points, Trial, read_points_csv, read_trials, write_points_csv, write_trials
from orchestrator.scaling_laws.report import write_report
from tests.helpers import REPO
from tests.orchestrator.scaling_laws.test_fit import isoflop_sweep
from workloads.errors import UserInputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OOM = "CUDA out of memory | rank 3 at step 0"  # a "|" must not break the Markdown table
DIVERGED = "loss became NaN at step 1200"


def synthetic_trials() -> list[Trial]:
    """A Chinchilla-law sweep whose trials recorded curves, plus two failed trials."""
    rng = np.random.default_rng(11)
    points = isoflop_sweep(CHINCHILLA, rng)
    trials = []
    for N, D, C, loss in zip(points.N.tolist(), points.D.tolist(), points.C.tolist(), points.loss.tolist()):
        tokens = np.geomspace(D / 100, D, 12)
        curve = [(float(t), float(CHINCHILLA.loss(N, t) * loss / CHINCHILLA.loss(N, D))) for t in tokens]
        trials.append(
            Trial(
                name=f"C{C:.0e}-N{N:.3g}",
                N=N,
                N_total=1.2 * N,
                D=D,
                C=C,
                loss=loss,
                curve=curve,
                shape={"n_layer": 8, "d_model": 512},
                lr=3e-4,
            )
        )
    trials.append(Trial(name="C1e+20-N9e9", N=9e9, D=1e20 / 5.4e10, C=1e20, status="failed", reason=OOM))
    trials.append(
        Trial(
            name="C3e+19-N2e9",
            N=2e9,
            D=2.5e9,
            C=3e19,
            status="diverged",
            reason=DIVERGED,
            curve=[(1e7, 7.0), (1e8, 4.5), (2e8, 9.0)],
        )
    )
    return trials


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sweep")
    write_trials(synthetic_trials(), directory / "trials.json")
    N, D = CHINCHILLA.optimal_allocation(3e20)
    verify = Trial(name="verify-3e20", N=float(N), D=float(D), loss=float(CHINCHILLA.loss(N, D)))
    (directory / "verify.json").write_text(json.dumps(verify.to_dict()))
    return directory


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000, path
    height, width, _ = imread(path).shape  # decodes the whole image
    assert width >= 500 and height >= 400, path


def test_report_holds_the_fits_failures_recommendation_and_verification(sweep_dir, tmp_path):
    trials = read_trials(sweep_dir / "trials.json")
    verify = Trial.from_dict(json.loads((sweep_dir / "verify.json").read_text()), "verify.json")
    fits = fit_sweep(Points.from_trials(trials), bootstrap=50, seed=0)
    files = write_report(
        sweep_dir,
        trials,
        fits,
        tmp_path / "report",
        target_flops=3e20,
        verify=verify,
        n_label="non-embedding parameters",
    )

    assert {p.name for p in files.plots} == {
        "isoflop.png",
        "frontier.png",
        "allocation.png",
        "fit_vs_observed.png",
        "curves.png",
    }
    for plot in files.plots:
        assert_png(plot)
    md = files.markdown.read_text()
    estimates = fits.parameters()
    for name in ("alpha", "beta", "a", "b"):
        assert f"{estimates[name].value:.3f}" in md, name
    assert "| Chinchilla (Hoffmann et al. 2022) |" in md and "| 0.340 |" in md  # the published α beside ours
    assert "CUDA out of memory \\| rank 3 at step 0" in md and DIVERGED in md
    assert "72 trials: 70 fitted, 2 failed" in md
    assert "## Recommendation for C = 3.00e20 FLOPs" in md
    N_opt, D_opt = fits.allocation(3e20)
    mantissa, exponent = f"{N_opt.value:.2e}".split("e")
    assert f"| N_opt (non-embedding parameters), approach 2 | {mantissa}e{int(exponent)} |" in md
    assert "## Verification run: verify-3e20" in md
    error = fits.predict(verify.N, verify.D).value / verify.loss - 1
    assert f"{error:+.2%}" in md and abs(error) < 0.01
    for plot in files.plots:
        assert f"]({plot.name})" in md  # the Markdown refers to the PNGs beside it

    page = files.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(files.plots)
    assert 'src="' + "isoflop.png" not in page
    assert "CUDA out of memory | rank 3 at step 0" in page and "&lt;" not in md


def test_report_command_writes_the_report_directory(sweep_dir):
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.report", str(sweep_dir), "--bootstrap", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = sweep_dir / "report"
    assert result.stdout.splitlines() == [f"report: {out / 'report.md'}", f"report: {out / 'report.html'}"]
    for name in ("isoflop.png", "frontier.png", "allocation.png", "fit_vs_observed.png", "curves.png"):
        assert_png(out / name)
    md = (out / "report.md").read_text()
    assert "## Recommendation for C = 1.00e21 FLOPs" in md  # default target: 10x the largest budget
    assert "default target" in md and "## Verification run" in md
    points = read_points_csv(out / "points.csv")  # the input of `python -m orchestrator.scaling fit`
    assert len(points) == 70


def test_trials_and_points_files_round_trip(tmp_path):
    trials = synthetic_trials()
    write_trials(trials, tmp_path / "trials.json")
    assert read_trials(tmp_path / "trials.json") == trials
    write_points_csv(trials, tmp_path / "points.csv")
    points = read_points_csv(tmp_path / "points.csv")
    ok = [t for t in trials if t.ok]
    assert points.N.tolist() == [t.N for t in ok] and points.loss.tolist() == [t.loss for t in ok]
    assert points.C.tolist() == [t.C for t in ok]
    assert (tmp_path / "points.csv").read_text().splitlines()[0] == "N,D,C,loss,N_total"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"name": "t", "N": 1e8, "D": 2e9}, 'trial 0 (t): loss is required when status is "ok"'),
        ({"name": "t", "N": 1e8, "D": -2e9, "loss": 3.0}, "trial 0 (t): D: must be a positive finite number"),
        ({"name": "t", "N": "1e8", "D": 2e9, "loss": 3.0}, "trial 0 (t): N: expected a number, got '1e8'"),
        ({"name": "t", "N": 1e8, "D": 2e9, "loss": 3.0, "tokens": 5}, "trial 0: unknown field(s) tokens"),
        (
            {"name": "t", "N": 1e8, "D": 2e9, "loss": 3.0, "curve": [[1e6]]},
            "trial 0 (t): curve[0]: expected [tokens, loss]",
        ),
    ],
)
def test_bad_trial_records_are_named(tmp_path, record, message):
    (tmp_path / "trials.json").write_text(json.dumps([record]))
    with pytest.raises(UserInputError) as caught:
        report_main([str(tmp_path)])
    assert str(caught.value).startswith(f"{tmp_path / 'trials.json'}: ") and message in str(caught.value)


def test_report_command_refuses_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.report", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'trials.json'}: no such file\n"
    (tmp_path / "trials.json").write_text(json.dumps([t.to_dict() for t in synthetic_trials()[:16]]))
    with pytest.raises(UserInputError) as caught:  # the second budget's first two sizes only
        report_main([str(tmp_path)])
    assert str(caught.value) == (
        f"{tmp_path / 'trials.json'}: budget C=3e+18 has 2 distinct sizes; an IsoFLOP parabola needs at least 3"
    )
