"""Running real pretrain jobs from tests and reading back what they recorded."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from orchestrator.stages.pretrain import PRETRAIN
from workloads.data.loader import PackedDataset
from workloads.data.order import stream_indices
from workloads.data.shards import FORMAT_VERSION, write_manifest, write_shards
from workloads.sample_ledger import final_history

REPO = Path(__file__).resolve().parent.parent  # the repository's root


# The session's one Ray cluster, started on first use (see shared_cluster) and stopped when the session ends.
_SHARED: dict = {}


def shared_cluster() -> dict:
    """The test session's Ray: `ray start --head` on 127.0.0.1 with 2 CPUs and token authentication, as a
    user starts a cluster, started once on first use: {"address", "dashboard", "env"}.

    Tests join it (`join_shared_ray`) and so do the commands they launch (`shared_env`: RAY_ADDRESS and the
    token), instead of each starting a Ray of its own (seconds each). Tests that kill Ray, time its start
    or need two nodes start their own. Its temp dir is private: a Ray client given no address finds
    the cluster recorded there, never this one.
    """
    if _SHARED:
        return _SHARED
    token = os.environ["RAY_AUTH_TOKEN"]  # set by conftest before Ray was imported
    ray_tmp = tempfile.mkdtemp(prefix="raytests-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # --block keeps the head's processes in this process group, so that stopping it stops exactly this cluster.
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dashboard_port}",
            "--dashboard-host=127.0.0.1",
            # Ports of its own where Ray has fixed defaults, which a Ray started by a test (or a user) may hold.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=2",
            "--disable-usage-stats",
        ],
        env={**env, "RAY_TMPDIR": ray_tmp},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    atexit.register(stop_shared_cluster)  # also when a script, not pytest, started it
    _SHARED.update(
        head=head,
        tmp=ray_tmp,
        address=f"127.0.0.1:{port}",
        dashboard=f"http://127.0.0.1:{dashboard_port}",
        env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
    )
    deadline = time.monotonic() + 120
    while not _answers(_SHARED["dashboard"], token):
        if head.poll() is not None or time.monotonic() > deadline:
            stop_shared_cluster()
            raise RuntimeError("ray start --head did not come up")
        time.sleep(0.5)
    return _SHARED


def _answers(dashboard: str, token: str) -> bool:
    """Whether the dashboard (which `ray job submit` talks to, and which comes up last) answers."""
    request = urllib.request.Request(f"{dashboard}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def stop_shared_cluster() -> None:
    """Stop the session's cluster, if one was started (SIGTERM, then SIGKILL to whatever is left after 5 s)."""
    if not _SHARED:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()
    head = _SHARED["head"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    shutil.rmtree(_SHARED["tmp"], ignore_errors=True)
    _SHARED.clear()


def shared_env(**extra: str) -> dict:
    """The environment of a command that joins the session's cluster (as inside `ray job submit`), with `extra`."""
    return {**shared_cluster()["env"], **extra}


def join_shared_ray() -> None:
    """Connect this process to the session's cluster (starting it if need be), unless it is connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=shared_cluster()["address"], log_to_driver=True)


def run_tiny(dataset: Path, output_dir: Path, tracking_uri: str, *overrides: str) -> dict:
    """One real pretrain job on the prepared tiny dataset (a local Ray must be running)."""
    cfg = PRETRAIN.parse(
        [
            "--config",
            "tiny",
            f"--data.corpus={dataset}",
            f"--run.output_dir={output_dir}",
            f"--tracking.uri={tracking_uri}",
            *overrides,
        ]
    )
    return PRETRAIN.run(cfg)


def launch_tiny(
    dataset: Path, output_dir: Path, tracking_uri: str, *overrides: str, env: dict | None = None
) -> subprocess.Popen:
    """`python -m orchestrator.pretrain` on the tiny dataset, as a user runs it; `env` None: joined to the
    session's cluster (shared_env), as inside `ray job submit`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.pretrain",
            "--config",
            "tiny",
            f"--data.corpus={dataset}",
            f"--run.output_dir={output_dir}",
            f"--tracking.uri={tracking_uri}",
            *overrides,
        ],
        env=shared_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def check_sample_history(run_dir: Path, dataset: Path, steps: int) -> int:
    """Assert that steps 1..steps of the history behind the final weights used the planned
    sample stream from its start, each sample once and in order; returns how many samples."""
    history = final_history(run_dir)
    assert sorted(history) == list(range(1, steps + 1))
    trained = np.concatenate([history[s] for s in range(1, steps + 1)])
    planned = stream_indices(PackedDataset(dataset, "train").num_samples, 0, len(trained), seed=0)
    assert np.array_equal(trained, planned), "samples lost, repeated or out of the planned order"
    return len(trained)


def step_metrics(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """{step: value} from the run's local metrics record; a resumed run's later lines win."""
    values: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            values[record["step"]] = record[key]
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port storing into root; returns once it answers."""
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("mlflow server did not come up")
        time.sleep(0.5)


def stage_args(home: dict, *overrides: str) -> list[str]:
    """A stage's tiny recipe in `home` (alignment_home: its runs and tracking store), with `overrides`."""
    return ["--config", "tiny", f"--run.output_dir={home['runs']}", f"--tracking.uri={home['uri']}", *overrides]


def train_stage(stage: str, home: dict, start, *overrides: str) -> dict:
    """One fine-tuning stage's tiny recipe, run in `home` from `start`; its final metrics."""
    # The registry imports the RL stages and so Ray: conftest imports this module where Ray is absent (the GPU check).
    from orchestrator.stages.registry import DRIVERS

    join_shared_ray()
    argv = stage_args(home, f"--model.init_from={start}", *overrides)
    driver = DRIVERS[stage]
    return driver.run(driver.parse(argv))


# Planted in the environment of the tracked run (conftest.tracked_run): no record of it may hold it.
PLANTED_SECRET = "planted-secret-" + "7f3a9c"

# A user's reward module whose functions each fail in one way (written to a file and imported by name).
BAD_REWARDS = """
calls = 0


def one_short(prompts, responses):
    return [1.0] * (len(responses) - 1)


def nan_always(prompts, responses):
    return [float("nan")] * len(responses)


def raises(prompts, responses):
    return [1 / 0 for _ in responses]


def nan_after_the_first_batch(prompts, responses):
    global calls
    calls += 1  # call 1 is the trial call, call 2 iteration 1's batch
    return [float("nan") if calls > 2 else 0.5 for _ in responses]
"""


def write_random_dataset(directory: Path, seq_len: int, vocab: int) -> Path:
    """A prepared-dataset directory of random samples (40 train, 8 validation), written the way prepare writes them."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", 40), ("val", 8)):
        tokens = rng.integers(0, vocab, size=(count, seq_len + 1), dtype=np.int32)
        segments = np.sort(rng.integers(0, 2, size=(count, seq_len + 1), dtype=np.int32), axis=1)
        splits[split] = {"num_samples": count, "shards": write_shards(directory, split, tokens, segments, 16)}
    write_manifest(directory, {"format_version": FORMAT_VERSION, "seq_len": seq_len, "splits": splits})
    return directory
