"""Shared fixtures: one real Ray cluster for the session, a small real corpus, and its prepared dataset."""

from __future__ import annotations

import json
import os
import secrets
import sysconfig
from pathlib import Path

import pytest

# The session's cluster (tests.helpers.shared_cluster) has token authentication on, as `ray start` does by
# default, and every Ray client of the session presents its token: set before Ray is first imported, as
# Ray reads the mode once per process. Rays that tests start of their own use the same token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

from tests.helpers import (
    PLANTED_SECRET,
    REPO,
    free_port,
    join_shared_ray,
    start_mlflow_server,
    stop_shared_cluster,
    train_stage,
)

# DeepSpeed JIT-compiles a small CPU comm op once (20-30 s); keep it across test runs.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# A train loop that cannot start must fail the test quickly instead of retrying for minutes.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# Real text every Python install has: a slice of the standard library's own modules.
CORPUS_MODULES = [
    "argparse.py",
    "collections/__init__.py",
    "dataclasses.py",
    "functools.py",
    "inspect.py",
    "pathlib.py",
    "subprocess.py",
    "textwrap.py",
    "typing.py",
    "json/decoder.py",
    "json/encoder.py",
]


@pytest.fixture
def shared_ray():
    """This process joined to the session's one Ray cluster (tests.helpers.shared_cluster); tests may
    disconnect (`ray.shutdown()`), the cluster stays up until the session ends."""
    import ray

    join_shared_ray()
    yield ray


def pytest_sessionfinish(session, exitstatus):
    stop_shared_cluster()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """~0.5 MB of real Python source as a directory of .txt files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path_factory.mktemp("corpus")
    for name in CORPUS_MODULES:
        text = (stdlib / name).read_text(encoding="utf-8")
        (corpus / (name.replace("/", "_") + ".txt")).write_text(text, encoding="utf-8")
    return corpus


@pytest.fixture(scope="session")
def tiny_dataset(small_corpus, tmp_path_factory) -> Path:
    """The small corpus prepared once with the tiny recipe's data and tokenizer sections."""
    from orchestrator.data.pretraining import prepare_dataset
    from orchestrator.stages.pretrain import PRETRAIN

    join_shared_ray()
    cfg = PRETRAIN.parse(["--config", "tiny", f"--data.corpus={small_corpus}"])
    return prepare_dataset(cfg.data, cfg.tokenizer, tmp_path_factory.mktemp("datasets"))


TINY_RUN_SETTINGS = (
    "--run.name=shared",
    "--train.checkpoint_interval=4",
    "--train.eval_interval=4",
    "--train.keep_checkpoints=2",
)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> dict:
    """One real tiny pretrain run (20 steps, MLflow in its own sqlite store), shared by every
    test that starts from a trained checkpoint and by those that compare a run with an uninterrupted
    one: {"run_dir", "checkpoint", "final", "tracking_uri"}. It checkpoints and evaluates every 4
    steps, keeping 2 checkpoints (test_pretrain reads them); neither changes what it trains."""
    from tests.helpers import run_tiny

    join_shared_ray()
    root = tmp_path_factory.mktemp("tiny-run")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    final = run_tiny(tiny_dataset, root / "runs", tracking_uri, *TINY_RUN_SETTINGS)
    return {
        "run_dir": root / "runs" / "shared",
        "checkpoint": Path(final["checkpoint"]),
        "final": final,
        "tracking_uri": tracking_uri,
    }


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` process on 127.0.0.1 for the session: its address."""
    port = free_port()
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def tracked_run(mlflow_server, tiny_dataset, tmp_path_factory) -> dict:
    """The tiny recipe halted at step 7 and resubmitted, tracked by the real MLflow server with a secret
    planted in the environment: {"client", "run_id", "first_id", "halted", "final", "run_dir"}.
    test_tracking reads its record, test_pretrain compares its curve with tiny_run's."""
    from mlflow.tracking import MlflowClient

    from tests.helpers import run_tiny

    join_shared_ray()
    output = tmp_path_factory.mktemp("tracked")
    os.environ["ORCHESTRATOR_TEST_API_KEY"] = PLANTED_SECRET
    try:
        halted = run_tiny(tiny_dataset, output, mlflow_server, "--train.halt_at_step=7")
        first_id = json.loads((output / "tiny" / "run.json").read_text())["mlflow_run_id"]
        final = run_tiny(tiny_dataset, output, mlflow_server)
    finally:
        del os.environ["ORCHESTRATOR_TEST_API_KEY"]
    return {
        "client": MlflowClient(mlflow_server),
        "run_id": json.loads((output / "tiny" / "run.json").read_text())["mlflow_run_id"],
        "first_id": first_id,
        "halted": halted,
        "final": final,
        "run_dir": output / "tiny",
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """The final checkpoint directory of the shared tiny run."""
    return tiny_run["checkpoint"]


@pytest.fixture(scope="session")
def alignment_home(tmp_path_factory, tiny_run) -> dict:
    """Where the alignment stages' shared runs live: {"root", "runs", "uri", "pretrained"}."""
    root = tmp_path_factory.mktemp("alignment")
    return {
        "root": root,
        "runs": root / "runs",
        "uri": f"sqlite:///{root / 'mlflow.db'}",
        "pretrained": tiny_run["checkpoint"],
    }


@pytest.fixture(scope="session")
def tiny_sft(alignment_home) -> dict:
    """The SFT recipe trained once from the shared tiny checkpoint (run sft-tiny), for every stage after SFT."""
    return train_stage("sft", alignment_home, alignment_home["pretrained"])


@pytest.fixture(scope="session")
def tiny_reward_model(alignment_home, tiny_sft) -> dict:
    """The reward-model recipe trained once from the shared SFT checkpoint (run reward-tiny)."""
    return train_stage("reward", alignment_home, tiny_sft["checkpoint"])


@pytest.fixture(scope="session")
def mixed_corpus_dataset(tmp_path_factory):
    """A mixed corpus (tests.corpora) prepared once: (dataset directory, its documents, data and tokenizer sections)."""
    from orchestrator.data.pretraining import prepare_dataset
    from tests.corpora import small_configs, write_corpus

    join_shared_ray()
    root = tmp_path_factory.mktemp("corpus")
    documents = write_corpus(root / "corpus")
    data, tok = small_configs(root / "corpus")
    dataset_dir = prepare_dataset(data, tok, root / "datasets")
    return dataset_dir, documents, data, tok
