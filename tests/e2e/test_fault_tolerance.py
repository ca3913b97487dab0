"""A training worker SIGKILLed mid-run: Ray Train restarts from the latest checkpoint by itself."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import check_sample_history, join_shared_ray, launch_tiny, run_tiny, shared_cluster, step_metrics

pytestmark = pytest.mark.slow

STEPS = 300
SETTINGS = (
    f"--train.max_steps={STEPS}",
    "--train.checkpoint_interval=50",
    "--train.eval_interval=150",
    "--train.log_interval=50",
)


def training_workers() -> list[psutil.Process]:
    """The training workers in the session's cluster, which the job joined: its raylet starts them."""
    head = psutil.Process(shared_cluster()["head"].pid)
    return [p for p in head.children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]


def test_sigkilled_worker_is_replaced_and_the_curve_is_unchanged(tiny_dataset, tmp_path):
    run_dir = tmp_path / "tiny"
    job = launch_tiny(
        tiny_dataset, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "--scaling.max_failures=2", *SETTINGS
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.jsonl").exists() or len(step_metrics(run_dir)) < 120:
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
            time.sleep(0.1)
        (victim,) = training_workers()
        os.kill(victim.pid, signal.SIGKILL)
        output, _ = job.communicate(timeout=600)
    finally:
        job.kill()
    assert job.returncode == 0, output[-3000:]
    assert "resumed from step 100" in output  # restarted by Ray Train from the latest checkpoint

    join_shared_ray()
    run_tiny(tiny_dataset, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "--run.name=straight", *SETTINGS)
    survived, straight = step_metrics(run_dir), step_metrics(tmp_path / "straight")
    assert sorted(survived) == list(range(1, STEPS + 1))
    assert survived == straight  # every step's loss, the final one included, exactly as without the failure

    # Nothing lost or repeated in the history of the final weights.
    assert check_sample_history(run_dir, tiny_dataset, STEPS) == STEPS * 8
    assert Path(run_dir / "samples").is_dir()
