"""Bad input: one line naming the problem, a non-zero exit, nothing overwritten or lost."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import REPO, run_tiny, step_metrics
from workloads.errors import UserInputError

pytestmark = pytest.mark.slow


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    copy = tmp_path / tiny_dataset.name
    shutil.copytree(tiny_dataset, copy)
    return copy


def refused(dataset: Path, output: Path, *overrides: str) -> str:
    with pytest.raises(UserInputError) as caught:
        run_tiny(dataset, output, f"sqlite:///{output / 'mlflow.db'}", *overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_truncated_shard_is_named(dataset_copy, tmp_path, shared_ray):
    shard = dataset_copy / "train-00000-000.arrow"  # group 0, its first shard
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert str(shard) in refused(dataset_copy, tmp_path / "out")
    assert not (tmp_path / "out" / "tiny").exists()  # nothing written for a refused run


def test_corrupted_shard_is_named(dataset_copy, tmp_path, shared_ray):
    shard = dataset_copy / "val-00000-000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the token data
    shard.write_bytes(bytes(data))
    message = refused(dataset_copy, tmp_path / "out")
    assert str(shard) in message and "sha256" in message


def test_tokenizer_that_does_not_match_the_manifest(dataset_copy, tmp_path, shared_ray, tiny_dataset):
    model = dataset_copy / "tokenizer.model"
    model.write_bytes(model.read_bytes() + b"\n")
    assert str(model) in refused(dataset_copy, tmp_path / "out")
    other = tmp_path / "other.model"
    other.write_bytes(b"not the dataset's tokenizer")
    message = refused(tiny_dataset, tmp_path / "out", f"--tokenizer.model_path={other}")
    assert message.startswith(f"tokenizer.model_path: {other} is not the tokenizer")


def test_model_vocabulary_smaller_than_the_tokenizer(tiny_dataset, tmp_path, shared_ray):
    message = refused(tiny_dataset, tmp_path / "out", "--model.vocab_size=100")
    assert message == "model.vocab_size=100 is smaller than the tokenizer's vocabulary (512)"


def test_run_directory_of_another_config_is_refused_unless_fresh(tiny_dataset, tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_tiny(tiny_dataset, tmp_path, uri, "--train.halt_at_step=3")
    checkpoints = sorted((tmp_path / "tiny" / "train").glob("checkpoint_*"))
    message = refused(tiny_dataset, tmp_path, "--train.lr=1e-4")
    assert message.startswith(f"{tmp_path / 'tiny'}: holds checkpoints of a different config")
    assert sorted((tmp_path / "tiny" / "train").glob("checkpoint_*")) == checkpoints  # nothing lost
    # Another worker count makes another global batch: refused as well, named as such.
    message = refused(tiny_dataset, tmp_path, "--scaling.num_workers=2")
    assert "was trained with global batch 8, now 16" in message
    final = run_tiny(tiny_dataset, tmp_path, uri, "--train.lr=1e-4", "--run.fresh=true")
    assert final["step"] == 20
    assert sorted(step_metrics(tmp_path / "tiny")) == list(range(1, 21))  # a new curve from step 1


def test_every_torch_load_in_the_project_is_weights_only():
    loads = []
    for source in [*REPO.glob("orchestrator/**/*.py"), *REPO.glob("workloads/**/*.py")]:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(", line):
                loads.append((source.name, number, "weights_only=True" in line))
    assert all(safe for _, _, safe in loads), loads
