"""The tracking server away at the start or mid-run: training goes on, nothing is lost.

A real `mlflow server` process is stopped and started again while a real
pretrain job (the CLI, as a user runs it) trains.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, launch_tiny, start_mlflow_server, step_metrics

pytestmark = pytest.mark.slow

STEPS = 600


def launch(dataset: Path, output: Path, uri: str) -> subprocess.Popen:
    return launch_tiny(
        dataset,
        output,
        uri,
        f"--train.max_steps={STEPS}",
        "--train.eval_interval=300",
        "--train.checkpoint_interval=300",
        "--train.log_interval=50",
    )


def wait_for_step(run_dir: Path, step: int, job: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = run_dir / "metrics.jsonl"
        if record.exists() and record.read_text().count("\n") >= step:
            return
        assert job.poll() is None, job.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s")


def warnings(output: str) -> int:
    return sum(line.startswith("warning: tracking server") for line in output.splitlines())


def tracking_lines(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "reachable" in line or "error" in line.lower())


def mlflow_losses(uri: str, run_dir: Path) -> list[int]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    return [m.step for m in client.get_metric_history(run_id, "train/loss")]


def test_server_going_away_mid_run(tiny_dataset, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path / "store", port)
    job = launch(tiny_dataset, tmp_path / "runs", uri)
    try:
        wait_for_step(tmp_path / "runs" / "tiny", 50, job)
        server.terminate()
        server.wait(timeout=30)
        time.sleep(5)  # several forwarding rounds fail while the server is away
        server = start_mlflow_server(tmp_path / "store", port)
        output, _ = job.communicate(timeout=300)
    finally:
        job.kill()
    try:
        assert job.returncode == 0, output[-3000:]
        assert warnings(output) == 1, tracking_lines(output)  # one warning, not one per attempt
        assert "reachable again" in output
        assert f"step {STEPS}/{STEPS}" in output
        assert mlflow_losses(uri, tmp_path / "runs" / "tiny") == list(range(1, STEPS + 1))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_server_unreachable_at_start(tiny_dataset, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    job = launch(tiny_dataset, tmp_path / "runs", uri)
    server = None
    try:
        wait_for_step(tmp_path / "runs" / "tiny", 100, job)
        server = start_mlflow_server(tmp_path / "store", port)
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, output[-3000:]
        assert warnings(output) == 1, tracking_lines(output)
        assert sorted(step_metrics(tmp_path / "runs" / "tiny")) == list(range(1, STEPS + 1))
        assert mlflow_losses(uri, tmp_path / "runs" / "tiny") == list(range(1, STEPS + 1))
    finally:
        job.kill()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
