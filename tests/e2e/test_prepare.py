"""`python -m orchestrator.prepare` as a user runs it: pretrain recipes and overrides, --verify, one-line errors."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from orchestrator.prepare import main
from workloads.data.loader import load_manifest

# prepare runs its tasks on Ray: a local Ray for the session (tests.helpers.join_shared_ray)
pytestmark = pytest.mark.usefixtures("shared_ray")


def test_cli_takes_pretrain_recipes_and_overrides(mixed_corpus_dataset, capsys):
    dataset_dir, _, data, tok = mixed_corpus_dataset
    overrides = [f"--data.{k}={v}" for k, v in dataclasses.asdict(data).items()]
    overrides += [f"--tokenizer.{k}={v}" for k, v in dataclasses.asdict(tok).items()]
    overrides.append(f"--data.dataset_dir={dataset_dir.parent}")
    assert main(["--config", "tiny", *overrides]) == 0
    assert "dataset already prepared" in capsys.readouterr().out


def test_verify_rehashes_every_shard_and_names_a_bad_one(mixed_corpus_dataset, tmp_path, capsys):
    dataset_dir, _, data, tok = mixed_corpus_dataset
    shutil.copytree(dataset_dir, tmp_path / dataset_dir.name)
    args = [f"--data.{k}={v}" for k, v in dataclasses.asdict(data).items()]
    args += [f"--tokenizer.{k}={v}" for k, v in dataclasses.asdict(tok).items()]
    args += [f"--data.dataset_dir={tmp_path}", "--verify"]
    manifest = load_manifest(dataset_dir)
    shards = manifest["splits"]["train"]["shards"] + manifest["splits"]["val"]["shards"]
    assert main(["--config", "tiny", *args]) == 0
    assert f"verified the tokenizer and {len(shards)} shards" in capsys.readouterr().out
    shard = tmp_path / dataset_dir.name / shards[0]["file"]
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF  # a token in the middle, same size: only a checksum tells
    shard.write_bytes(bytes(content))
    assert main(["--config", "tiny", *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {shard}: sha256 ")


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["--config", "tiny", f"--data.corpus={missing}", f"--data.dataset_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == f"error: data.corpus: no such file or directory: {missing}\n"
