"""The whole job SIGKILLed while it saves a checkpoint: the previous one stays valid and is resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import check_sample_history, join_shared_ray, launch_tiny, run_tiny, step_metrics

pytestmark = pytest.mark.slow

STEPS = 40
SETTINGS = (
    f"--train.max_steps={STEPS}",
    "--train.checkpoint_interval=4",
    "--train.eval_interval=20",
    "--train.log_interval=20",
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
    run_dir, worker_tmp = tmp_path / "tiny", tmp_path / "worker-tmp"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    worker_tmp.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="raykill-", dir="/tmp")  # short: Ray's socket paths have a length limit
    # A Ray of the job's own (no RAY_ADDRESS), SIGKILLed with it as when the machine goes down. Its
    # workers inherit TMPDIR, so the test can see a save's staging directory appear.
    env = {**os.environ, "TMPDIR": str(worker_tmp), "RAY_TMPDIR": ray_tmp}
    job = launch_tiny(tiny_dataset, tmp_path, tracking_uri, *SETTINGS, env=env)
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

    resubmitted = launch_tiny(tiny_dataset, tmp_path, tracking_uri, *SETTINGS)  # to a cluster that is up
    output, _ = resubmitted.communicate(timeout=600)
    assert resubmitted.returncode == 0, output[-3000:]
    assert f"training resumed from step {previous}:" in output, output[-5000:]

    join_shared_ray()
    run_tiny(tiny_dataset, tmp_path, tracking_uri, "--run.name=straight", *SETTINGS)
    resumed, straight = step_metrics(run_dir), step_metrics(tmp_path / "straight")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == straight  # the kept checkpoint was whole: the curve goes on exactly as without the kill

    assert check_sample_history(run_dir, tiny_dataset, STEPS) == STEPS * 8
    print(f"killed during the step-{interrupted} save; resumed from step {previous}")
