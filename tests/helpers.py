"""Running real pretrain jobs from tests and reading back what they recorded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
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


def ensure_local_ray() -> None:
    """A private local Ray with 2 CPUs (never a cluster some other process started)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)


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
    """`python -m orchestrator.pretrain` on the tiny dataset, as a user runs it (it starts its own local Ray)."""
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
        env=env,
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

    ensure_local_ray()
    argv = stage_args(home, f"--model.init_from={start}", *overrides)
    driver = DRIVERS[stage]
    return driver.run(driver.parse(argv))


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
