"""The whole job SIGKILLed while it saves a checkpoint: the previous one stays valid and is resumed."""
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

import numpy as np
import psutil
import pytest

from pretrain_helpers import ensure_local_ray, run_tiny, step_metrics
from workloads.data.loader import PackedDataset
from workloads.data.order import stream_indices
from workloads.sample_ledger import final_history

pytestmark = pytest.mark.slow

STEPS = 40
SETTINGS = (f"--train.max_steps={STEPS}", "--train.checkpoint_interval=4", "--train.eval_interval=20",
            "--train.log_interval=20")


def pretrain_job(tiny_dataset: Path, tmp_path: Path, env: dict) -> subprocess.Popen:
    """`python -m orchestrator.pretrain`, which starts its own local Ray."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.pretrain", "--config", "tiny", f"--data.corpus={tiny_dataset}",
         f"--run.output_dir={tmp_path}", f"--tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *SETTINGS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def job_processes(job: subprocess.Popen) -> list[psutil.Process]:
    """The driver and everything it started: its local Ray's services, controller and training workers."""
    try:
        root = psutil.Process(job.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def saves_in_progress(worker_tmp: Path) -> list[int]:
    """Steps whose checkpoint a worker is writing or uploading (its staging directory exists)."""
    return [int(p.name.split("-")[1].removeprefix("step")) for p in worker_tmp.glob("ckpt-step*-*")]


def registered_step(storage: Path) -> int:
    """The step of the newest checkpoint in Ray Train's run snapshot: what a resubmission gets."""
    snapshot = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
    return snapshot["latest_checkpoint_result"]["metrics"]["step"]


def test_job_killed_during_a_save_resumes_from_the_previous_checkpoint(tiny_dataset, tmp_path):
    import ray

    ray.shutdown()  # the jobs below start their own Ray, as a user's would
    run_dir, worker_tmp = tmp_path / "tiny", tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="raykill-", dir="/tmp")  # short: Ray's socket paths have a length limit
    # Workers inherit TMPDIR, so the test can see a save's staging directory appear.
    env = {**os.environ, "TMPDIR": str(worker_tmp), "RAY_TMPDIR": ray_tmp}
    job = pretrain_job(tiny_dataset, tmp_path, env)
    try:
        deadline, processes, listed = time.monotonic() + 300, [], 0.0
        while not [s for s in saves_in_progress(worker_tmp) if s >= 12]:  # a save with earlier ones behind it
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
            if time.monotonic() - listed > 0.5:  # listing takes too long to do after the save is seen
                processes, listed = job_processes(job), time.monotonic()
            time.sleep(0.002)
        kill_all(processes)
        interrupted = max(saves_in_progress(worker_tmp))
        job.wait(timeout=60)
    finally:
        kill_all(job_processes(job))
        shutil.rmtree(ray_tmp, ignore_errors=True)

    storage = run_dir / "train"
    previous = registered_step(storage)
    assert previous < interrupted, "the interrupted save must not have become the resumable checkpoint"
    assert max(step_metrics(run_dir)) >= interrupted  # it really died mid-run, past the last commit

    ray_tmp = tempfile.mkdtemp(prefix="raykill-", dir="/tmp")
    resubmitted = pretrain_job(tiny_dataset, tmp_path, {**os.environ, "RAY_TMPDIR": ray_tmp})
    output, _ = resubmitted.communicate(timeout=600)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resubmitted.returncode == 0, output[-3000:]
    assert f"training resumed from step {previous}:" in output, output[-5000:]

    ensure_local_ray()
    run_tiny(tiny_dataset, tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", "--run.name=straight", *SETTINGS)
    resumed, straight = step_metrics(run_dir), step_metrics(tmp_path / "straight")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == straight  # the kept checkpoint was whole: the curve goes on exactly as without the kill

    history = final_history(run_dir)
    trained = np.concatenate([history[s] for s in range(1, STEPS + 1)])
    planned = stream_indices(PackedDataset(tiny_dataset, "train").num_samples, 0, STEPS * 8, seed=0)
    assert np.array_equal(trained, planned)
    print(f"killed during the step-{interrupted} save; resumed from step {previous}")
