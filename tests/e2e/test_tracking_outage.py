"""The tracking server away at the start and again mid-run: training goes on, nothing is lost.

One real pretrain job (the CLI, as a user runs it) starts while its `mlflow server` is not up;
the server is started once the job trains, and once the job has caught up with it the server is
stopped and started again while the job still trains. The tests read what the job printed about
each outage and what reached MLflow.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, launch_tiny, start_mlflow_server, step_metrics

pytestmark = pytest.mark.slow

STEPS = 1500
RECONNECTED = "reachable again"


def warnings(lines: list[str]) -> int:
    return sum(line.startswith("warning: tracking server") for line in lines)


def tracking_lines(lines: list[str]) -> str:
    return "\n".join(line for line in lines if "reachable" in line or "error" in line.lower())


def trained_steps(run_dir: Path) -> int:
    """Steps in the run's local metrics record so far."""
    record = run_dir / "metrics.jsonl"
    return record.read_text().count("\n") if record.exists() else 0


def wait_until(condition, job, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def outages(tiny_dataset, tmp_path_factory):
    """{"before", "between", "after": the job's output lines split at each reconnection, "returncode",
    "stopped_at": the step the job had trained when the running server was stopped, "uri", "run_dir"}."""
    root = tmp_path_factory.mktemp("outage")
    run_dir, port = root / "runs" / "tiny", free_port()
    uri = f"http://127.0.0.1:{port}"
    job = launch_tiny(
        tiny_dataset,
        root / "runs",
        uri,
        f"--train.max_steps={STEPS}",
        "--train.eval_interval=750",
        "--train.checkpoint_interval=750",
        "--train.log_interval=50",
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in job.stdout), daemon=True)
    reader.start()
    server = None
    try:
        wait_until(lambda: trained_steps(run_dir) >= 50, job, "step 50")
        server = start_mlflow_server(root / "store", port)  # the first outage ends
        wait_until(lambda: any(RECONNECTED in line for line in lines), job, "reconnection")
        stopped_at = trained_steps(run_dir)
        server.terminate()  # the second outage: the job goes on training meanwhile
        server.wait(timeout=30)
        time.sleep(5)  # several forwarding rounds fail while the server is away
        server = start_mlflow_server(root / "store", port)
        job.wait(timeout=300)
        reader.join(timeout=60)
        reconnections = [i for i, line in enumerate(lines) if RECONNECTED in line] + [len(lines)] * 2
        first, second = reconnections[:2]
        yield {  # the server stays up while the tests read what reached it
            "before": lines[:first],
            "between": lines[first:second],
            "after": lines[second:],
            "returncode": job.returncode,
            "stopped_at": stopped_at,
            "uri": uri,
            "run_dir": run_dir,
        }
    finally:
        job.kill()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def mlflow_losses(uri: str, run_dir: Path) -> list[int]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    return [m.step for m in client.get_metric_history(run_id, "train/loss")]


def test_server_unreachable_at_start(outages):
    output = outages["before"] + outages["between"] + outages["after"]
    assert outages["returncode"] == 0, "\n".join(output[-60:])
    assert warnings(outages["before"]) == 1, tracking_lines(outages["before"])  # one warning, not one per attempt
    assert sorted(step_metrics(outages["run_dir"])) == list(range(1, STEPS + 1))
    assert mlflow_losses(outages["uri"], outages["run_dir"]) == list(range(1, STEPS + 1))


def test_server_going_away_mid_run(outages):
    output = outages["before"] + outages["between"] + outages["after"]
    assert outages["returncode"] == 0, "\n".join(output[-60:])
    assert outages["stopped_at"] < STEPS, "the job had finished training before the server went away"
    assert warnings(outages["between"]) == 1, tracking_lines(outages["between"])
    assert outages["after"], f"no reconnection after the second outage:\n{tracking_lines(output)}"
    assert warnings(outages["after"]) == 0, tracking_lines(outages["after"])
    assert f"step {STEPS}/{STEPS}" in "\n".join(output)
    assert mlflow_losses(outages["uri"], outages["run_dir"]) == list(range(1, STEPS + 1))
