"""Shared fixtures: a real local Ray, a small real corpus, and its prepared dataset."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import REPO, ensure_local_ray, train_stage

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
def ray_local():
    """A local Ray with 2 CPUs, started once and kept for the session (tests may shut it down)."""
    import ray

    ensure_local_ray()
    yield ray


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

    ensure_local_ray()
    cfg = PRETRAIN.parse(["--config", "tiny", f"--data.corpus={small_corpus}"])
    return prepare_dataset(cfg.data, cfg.tokenizer, tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> dict:
    """One real tiny pretrain run (20 steps, MLflow in its own sqlite store), shared by every
    test that starts from a trained checkpoint: {"run_dir", "checkpoint", "final", "tracking_uri"}."""
    from tests.helpers import run_tiny

    ensure_local_ray()
    root = tmp_path_factory.mktemp("tiny-run")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    final = run_tiny(tiny_dataset, root / "runs", tracking_uri, "--run.name=shared")
    return {
        "run_dir": root / "runs" / "shared",
        "checkpoint": Path(final["checkpoint"]),
        "final": final,
        "tracking_uri": tracking_uri,
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

    ensure_local_ray()
    root = tmp_path_factory.mktemp("corpus")
    documents = write_corpus(root / "corpus")
    data, tok = small_configs(root / "corpus")
    dataset_dir = prepare_dataset(data, tok, root / "datasets")
    return dataset_dir, documents, data, tok
