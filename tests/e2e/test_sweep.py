"""A tiny scaling-law sweep as a user runs it: killed mid-way, run again, fitted, reported, tracked.

One sweep (the `tiny` sweep recipe on the prepared tiny dataset: 2 budgets x 3 sizes, WSD
branches, then the verification run) is started with `python -m orchestrator.sweep`, its
whole process group SIGKILLed once two trials are finished and another has a checkpoint,
and started again with the same command, joined this time to the session's running cluster.
The tests read what that left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from orchestrator.scaling_laws.points import read_trials
from orchestrator.scaling_laws.trial_records import OK, RECORD_FILE
from tests.helpers import shared_env

pytestmark = pytest.mark.slow

OVERRIDES = [
    "--train.micro_batch_size=8",
    "--train.grad_accum_steps=1",
    "--train.log_interval=100",
    "--train.checkpoint_interval=500",
    "--train.eval_samples=16",
]  # the tiny sweep recipe's own
GRID_TRIALS = 6


def sweep_command(dataset: Path, root: Path) -> list[str]:
    overrides = ", ".join([*OVERRIDES, f"--data.corpus={dataset}"])
    # Verification at 1.25x the largest budget: the default 4x trains the longest run of all.
    return [
        sys.executable,
        "-m",
        "orchestrator.sweep",
        "--config",
        "tiny",
        f"--run.output_dir={root / 'runs'}",
        f"--tracking.uri=sqlite:///{root / 'mlflow.db'}",
        f"--sweep.base_overrides=[{overrides}]",
        "--sweep.verify_flops=1.0e+11",
    ]


def launch(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The command in a session of its own, its output to `log` (a pipe nobody drains would stall it)."""
    env = {**env, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finished_records(trials: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in trials.glob(f"*/{RECORD_FILE}")}


def checkpointed_unfinished(trials: Path) -> list[str]:
    """Trials without a record that have registered a checkpoint (so a re-run resumes them)."""
    return [
        d.name
        for d in trials.glob("*")
        if d.is_dir()
        and not (d / RECORD_FILE).exists()
        and (d / "train" / "checkpoint_manager_snapshot.json").exists()
        and json.loads((d / "train" / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    ]


def kill_group(job: subprocess.Popen) -> None:
    """SIGKILL the driver's process group and everything it started (Ray's services start sessions of their own)."""
    try:
        processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def sweep(tiny_dataset, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    trials = root / "runs" / "sweep-tiny" / "trials"
    # The first run starts a local Ray of its own, as on a laptop, which dies with it.
    ray_tmp = tempfile.mkdtemp(prefix="raysweep-", dir="/tmp")  # short: Ray's socket paths have a length limit
    alone = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    first = launch(sweep_command(tiny_dataset, root), {**alone, "RAY_TMPDIR": ray_tmp}, root / "first.log")
    try:
        deadline = time.monotonic() + 900
        while not (len(finished_records(trials)) >= 2 and checkpointed_unfinished(trials)):
            if first.poll() is not None or time.monotonic() > deadline:
                kill_group(first)
                pytest.fail(
                    "the sweep ended or stalled before it could be interrupted:\n"
                    + (root / "first.log").read_text()[-4000:]
                )
            time.sleep(0.5)
        kill_group(first)
        first.wait(timeout=60)
        records = finished_records(trials)
        before = {
            "records": records,
            "interrupted": [n for n in checkpointed_unfinished(trials) if n not in records],
            "run_ids": {
                d.name: json.loads((d / "run.json").read_text())["mlflow_run_id"]
                for d in trials.glob("*")
                if (d / "run.json").exists()
            },
        }
    finally:
        kill_group(first)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # Run again on a cluster that is up (the session's), as inside `ray job submit`.
    started = time.monotonic()
    again = launch(sweep_command(tiny_dataset, root), shared_env(), root / "again.log")
    try:
        again.wait(timeout=1200)
    finally:
        kill_group(again)
    output = (root / "again.log").read_text()
    assert again.returncode == 0, output[-6000:]
    print(f"sweep re-run finished in {time.monotonic() - started:.0f} s")
    return {
        "root": root,
        "sweep_dir": root / "runs" / "sweep-tiny",
        "trials": trials,
        "before": before,
        "output": output,
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }


def test_the_rerun_trains_only_what_was_unfinished(sweep):
    before, output = sweep["before"], sweep["output"]
    done = len(before["records"])
    assert f"sweep: {done} of {GRID_TRIALS} trials already finished; training {GRID_TRIALS - done}" in output, output[
        -4000:
    ]
    for name, record in before["records"].items():  # finished trials were read back, not trained again
        assert (sweep["trials"] / name / RECORD_FILE).read_bytes() == record
    for name in before["interrupted"]:
        run_dir = sweep["trials"] / name
        record = json.loads((run_dir / RECORD_FILE).read_text())
        assert record["status"] == OK
        # It resumed from its checkpoint: this invocation trained fewer steps than the trial has.
        assert record["timing"]["steps"] < record["steps"] - record["branch_step"], name
        # It kept its MLflow run: the same child continued, none was added.
        assert json.loads((run_dir / "run.json").read_text())["mlflow_run_id"] == before["run_ids"][name]


def test_the_sweep_fits_reports_and_recommends(sweep):
    sweep_dir = sweep["sweep_dir"]
    trials = read_trials(sweep_dir / "trials.json")
    assert len(trials) == GRID_TRIALS and all(t.ok for t in trials)
    assert {t.C for t in trials} and all(t.C != 6 * t.N * t.D for t in trials)  # exact FLOPs, not 6ND
    assert sum(1 for t in trials if t.curve) == GRID_TRIALS
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    branches = [t for t in summary["trials"] if t.get("branch_of")]
    assert (
        len(branches) == 2
        and summary["compute"]["wsd"]["trained_flops"] < summary["compute"]["wsd"]["independent_flops"]
    )
    assert 0 < summary["utilization"]["utilization"] <= 1

    report = (sweep_dir / "report" / "report.md").read_text()
    for heading in (
        "## Recommendation for C",
        "## Fitted parameters",
        "## Verification run: verify-",
        "## Which N: without and with the output head",
        "## Schedules and compute",
        "## Cluster utilization",
    ):
        assert heading in report
    for name in ("report.html", "isoflop.png", "frontier.png", "allocation.png", "curves.png", "points.csv"):
        assert (sweep_dir / "report" / name).stat().st_size > 0
    assert "Which N: without and with the output head" in (sweep_dir / "report" / "report.html").read_text()
    verify = json.loads((sweep_dir / "verify.json").read_text())
    assert verify["status"] == OK and verify["loss"] > 0

    fitted = subprocess.run(
        [sys.executable, "-m", "orchestrator.scaling", "fit", str(sweep_dir / "points.csv"), "--bootstrap", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fitted.returncode == 0, fitted.stderr
    assert json.loads(fitted.stdout)["n_points"] == GRID_TRIALS

    recipe = sweep_dir / "recommended.yaml"
    printed = subprocess.run(
        [sys.executable, "-m", "orchestrator.pretrain", "--config", str(recipe), "--print-config"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout)["model"] == yaml.safe_load(recipe.read_text())["model"]


def test_every_evaluation_reached_tune(sweep):
    """Tune saw each trial's curve: evaluations between checkpoints were reported too."""
    results = sweep["sweep_dir"].glob("tune/grid-*/C8e+10-L1-d16/result.json")
    steps = {
        json.loads(line)["step"]
        for path in results
        for line in path.read_text().splitlines()
        if "eval/loss" in json.loads(line)
    }
    assert {454, 908, 1362, 1816} <= steps  # eval every 1817 // 4 steps; checkpoints every 200 and at 726


def test_parent_and_child_runs_in_mlflow(sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep["tracking_uri"])
    parent_id = json.loads((sweep["sweep_dir"] / "mlflow_parent.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert {"fit/a", "fit/alpha", "verify/relative_error", "sweep/utilization"} <= set(parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.json", "points.csv", "sweep.json", "recommended.yaml", "report"} <= artifacts
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    names = sorted(run.info.run_name for run in children)
    assert len(names) == len(set(names)) == GRID_TRIALS + 1  # one run per trial, the verification run included
    for run in children:
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert {"sweep.N", "sweep.N_total", "sweep.D", "sweep.C", "sweep.shape", "sweep.lr"} <= set(tags)
        assert {"final/loss", "final/bpb"} <= set(run.data.metrics)
        assert client.get_metric_history(run.info.run_id, "eval/loss")

    reported = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.report",
            parent_id,
            "--tracking-uri",
            sweep["tracking_uri"],
            "--bootstrap",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reported.returncode == 0, reported.stderr
    markdown = Path(reported.stdout.splitlines()[-2].removeprefix("report: "))
    assert markdown.name == "report.md" and "## Verification run" in markdown.read_text()
