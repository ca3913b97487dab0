"""A training worker SIGKILLed mid-run: Ray Train restarts from the latest checkpoint by itself."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pretrain_helpers import ensure_local_ray, run_tiny, step_metrics
from workloads.data.loader import PackedDataset
from workloads.data.order import stream_indices
from workloads.sample_ledger import final_history

pytestmark = pytest.mark.slow

STEPS = 300
SETTINGS = (f"--train.max_steps={STEPS}", "--train.checkpoint_interval=50", "--train.eval_interval=150",
            "--train.log_interval=50")


def training_workers(job: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(job.pid).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def test_sigkilled_worker_is_replaced_and_the_curve_is_unchanged(tiny_dataset, tmp_path):
    import ray

    ray.shutdown()  # the job below starts its own Ray, as a user's would
    run_dir = tmp_path / "tiny"
    job = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.pretrain", "--config", "tiny", f"--data.corpus={tiny_dataset}",
         f"--run.output_dir={tmp_path}", f"--tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
         "--scaling.max_failures=2", *SETTINGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.jsonl").exists() or len(step_metrics(run_dir)) < 120:
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
            time.sleep(0.1)
        (victim,) = training_workers(job)
        os.kill(victim.pid, signal.SIGKILL)
        output, _ = job.communicate(timeout=600)
    finally:
        job.kill()
    assert job.returncode == 0, output[-3000:]
    assert "resumed from step 100" in output  # restarted by Ray Train from the latest checkpoint

    ensure_local_ray()
    run_tiny(tiny_dataset, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "--run.name=straight", *SETTINGS)
    survived, straight = step_metrics(run_dir), step_metrics(tmp_path / "straight")
    assert sorted(survived) == list(range(1, STEPS + 1))
    assert survived == straight  # every step's loss, the final one included, exactly as without the failure

    history = final_history(run_dir)
    trained = np.concatenate([history[s] for s in range(1, STEPS + 1)])
    planned = stream_indices(PackedDataset(tiny_dataset, "train").num_samples, 0, STEPS * 8, seed=0)
    assert np.array_equal(trained, planned)  # nothing lost or repeated in the history of the final weights
    assert Path(run_dir / "samples").is_dir()
