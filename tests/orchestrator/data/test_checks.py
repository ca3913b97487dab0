"""Launch checks of a prepared dataset: each shard hashed once, again only when it changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from orchestrator.data import checks as dataset_checks
from orchestrator.stages.pretrain import PRETRAIN
from workloads.data import shards as shards_module
from workloads.errors import UserInputError


@pytest.mark.slow
def test_launch_checks_hash_each_shard_once_and_again_only_when_it_changed(tiny_dataset, tmp_path, monkeypatch):
    dataset = tmp_path / tiny_dataset.name
    shutil.copytree(tiny_dataset, dataset)
    (dataset / dataset_checks.VERIFIED_FILE).unlink(missing_ok=True)
    cfg = PRETRAIN.parse(["--config", "tiny", f"--data.corpus={dataset}"])
    hashed = []
    real_sha256 = shards_module.file_sha256  # what every shard check hashes with: count its calls
    monkeypatch.setattr(shards_module, "file_sha256", lambda path: hashed.append(Path(path).name) or real_sha256(path))

    dataset_checks.check_dataset(dataset, cfg.data, cfg.tokenizer, cfg.model)
    shards = {"train-00000-000.arrow", "val-00000-000.arrow"}
    assert shards <= set(hashed)
    hashed.clear()
    dataset_checks.check_dataset(dataset, cfg.data, cfg.tokenizer, cfg.model)
    assert not shards & set(hashed)  # metadata reads only

    shard = dataset / "val-00000-000.arrow"
    stat = shard.stat()
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same modification time
    with pytest.raises(UserInputError, match="sha256"):
        dataset_checks.check_dataset(dataset, cfg.data, cfg.tokenizer, cfg.model)
