"""`ray start --head` + `ray job submit -- python -m orchestrator.pretrain`, with token auth on."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """A Ray head started like a user would, with token authentication, torn down afterwards."""
    import ray

    ray.shutdown()  # the tests' in-process Ray would compete for the 2 CPUs
    home = tmp_path_factory.mktemp("home")
    token = secrets.token_hex(16)
    dashboard_port = free_port()
    # A private temp dir: `ray start` records its address under it, where any Ray client on the
    # machine given no address would otherwise find (and talk to) this cluster.
    ray_tmp = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(home), "RAY_TMPDIR": ray_tmp}
    # --block keeps the head's processes in this process group, so the teardown stops
    # exactly this cluster and nothing else running on the machine.
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard_port}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--disable-usage-stats",
        ],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 90
    while subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode != 0:
        assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
        time.sleep(1)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def submit(address: str, env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", "submit", "--address", address, "--", *entrypoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_pretrain_runs_as_a_submitted_job(head_node, small_corpus, tmp_path):
    address, env = head_node
    done = submit(
        address,
        env,
        "python",
        "-m",
        "orchestrator.pretrain",
        "--config",
        "tiny",
        f"--data.corpus={small_corpus}",
        f"--run.output_dir={tmp_path}/runs",
        f"--tracking.uri=sqlite:///{tmp_path}/mlflow.db",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pretrain: cluster at" in done.stdout  # joined the submitted-to cluster, did not start its own
    assert "step 20/20" in done.stdout
    assert "pretrain: done at step 20" in done.stdout and "bits per byte" in done.stdout
    assert (tmp_path / "runs" / "tiny" / "metrics.jsonl").exists()


def test_submission_without_the_token_is_refused(head_node, tmp_path):
    address, env = head_node
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    refused = submit(address, no_token, "echo", "should-not-run")
    assert refused.returncode != 0
    assert "should-not-run" not in refused.stdout
    assert "auth" in (refused.stdout + refused.stderr).lower()
    wrong_token = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    refused = submit(address, wrong_token, "echo", "should-not-run")
    assert refused.returncode != 0
    assert "Invalid authentication token" in refused.stdout + refused.stderr
