"""`ray start --head` + `ray job submit -- python -m orchestrator.pretrain`, with token auth on."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import shared_cluster

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def head_node():
    """The session's cluster, started like a user would (`ray start --head`, token authentication on):
    its dashboard's address and the environment holding its token (not its address: a user names the
    dashboard with --address)."""
    cluster = shared_cluster()
    return cluster["dashboard"], {k: v for k, v in cluster["env"].items() if k != "RAY_ADDRESS"}


def submit(address: str, env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    """`ray job submit`; refused submissions are retried while the head's job agent is still starting."""
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(
            [RAY, "job", "submit", "--address", address, "--", *entrypoint],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(1)


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
