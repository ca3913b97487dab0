"""Prepare as a distributed pipeline: the same dataset at any parallelism, on two nodes,
and after being killed mid-way; source digests and shard checksums only re-read on change.

The corpus is real text (standard-library modules) in every form prepare reads,
with files big enough to be cut into pieces: a long .txt, a long .jsonl and a
parquet file of many row groups, next to small files. A small group size cuts it
into several dozen groups, so that tasks really run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.benchmarks.preparation import parse_progress
from orchestrator.data.pretraining import prepare_dataset
from orchestrator.data.source_digests import CACHE_FILE, digest_sources_cached
from tests.helpers import REPO
from workloads.data.config import DataConfig
from workloads.data.corpus import digest_source, find_sources
from workloads.data.loader import load_manifest
from workloads.tokenizer import TokenizerConfig

GROUP_BYTES = 32 * 1024  # several dozen groups: a window of seconds to kill a prepare mid-way
MODULES = [
    "argparse.py",
    "dataclasses.py",
    "inspect.py",
    "pathlib.py",
    "subprocess.py",
    "typing.py",
    "textwrap.py",
    "functools.py",
    "json/decoder.py",
    "json/encoder.py",
    "collections/__init__.py",
    "enum.py",
    "tempfile.py",
    "shutil.py",
    "logging/__init__.py",
    "tarfile.py",
    "zipfile/__init__.py",
    "ast.py",
    "pickle.py",
    "threading.py",
]


def write_corpus(directory: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in MODULES if (stdlib / name).is_file()]
    directory.mkdir(parents=True)
    for i, text in enumerate(texts[:6]):  # small files, several to a group
        (directory / f"a{i:02d}.txt").write_text(text)
    (directory / "b-long.txt").write_text("\n\n".join(texts[6:12]))  # cut into pieces at blank lines
    records = [{"text": paragraph} for text in texts[12:] for paragraph in text.split("\n\n") if paragraph.strip()]
    (directory / "c-long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.table({"text": [r["text"] for r in records[::-1]]}), directory / "d.parquet", row_group_size=300)


def configs(corpus: Path) -> tuple[DataConfig, TokenizerConfig]:
    data = DataConfig(corpus=str(corpus), seq_len=64, val_fraction=0.05, shard_samples=1000, max_doc_chars=4000)
    return data, TokenizerConfig(vocab_size=512, train_max_chars=200_000)


def dataset_files(dataset_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dataset_dir.iterdir()) if p.name != "verified.json"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale")
    write_corpus(root / "corpus")
    return root / "corpus"


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The dataset prepared on a local Ray of one CPU: (its directory, its printed output)."""
    import ray

    ray.shutdown()  # the session's 2-CPU Ray, if any
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        output = _capture(
            lambda: prepare_dataset(*configs(corpus), tmp_path_factory.mktemp("one-cpu"), group_bytes=GROUP_BYTES)
        )
    finally:
        ray.shutdown()
    return output


def _capture(fn):
    """(fn's result, what it printed): prepare's lines are printed, not logged."""
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = fn()
    return result, out.getvalue()


def test_pieces_and_groups_come_from_the_input(reference):
    dataset_dir, output = reference
    manifest = load_manifest(dataset_dir)
    assert manifest["groups"] >= 30 and manifest["group_bytes"] == GROUP_BYTES
    assert re.search(rf"prepare: {manifest['groups']}/{manifest['groups']} groups, .* tokens, .* ETA 0 s", output)
    # The bench reads the same lines for prepare's tokens/s: they end at the dataset's token count.
    progress = parse_progress(output)
    assert progress[-1]["tokens"] == sum(manifest["splits"][s]["num_tokens"] for s in ("train", "val"))
    assert progress[-1]["mb"] == progress[-1]["total_mb"] > 0
    assert "built" in output and "on 1 node" in output
    # Shards are named after their group; every group holds train samples.
    groups = {int(shard["file"].split("-")[1]) for shard in manifest["splits"]["train"]["shards"]}
    assert groups == set(range(manifest["groups"]))


def test_same_dataset_with_two_cpus_and_on_two_nodes(reference, corpus, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    reference_dir, _ = reference
    expected = dataset_files(reference_dir)

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        two_cpus, _ = _capture(
            lambda: prepare_dataset(*configs(corpus), tmp_path / "two-cpus", group_bytes=GROUP_BYTES)
        )
    finally:
        ray.shutdown()
    assert two_cpus.name == reference_dir.name
    assert dataset_files(two_cpus) == expected  # every shard, the tokenizer and the manifest, byte for byte

    # A private temp dir keeps this cluster's address record to this test (see test_multinode).
    private_tmp = tempfile.mkdtemp(prefix="ray-prep-")
    monkeypatch.setenv("RAY_TMPDIR", private_tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        assert len([node for node in ray.nodes() if node["Alive"]]) == 2
        two_nodes, output = _capture(
            lambda: prepare_dataset(*configs(corpus), tmp_path / "two-nodes", group_bytes=GROUP_BYTES)
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(private_tmp, ignore_errors=True)
    assert "on 2 nodes" in output  # the group tasks ran on both nodes
    assert dataset_files(two_nodes) == expected


KILLABLE_PREPARE = textwrap.dedent("""
    import ray
    from tests.orchestrator.data.test_pretraining_scale import configs
    from orchestrator.data.pretraining import prepare_dataset
    from pathlib import Path
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    prepare_dataset(*configs(Path({corpus!r})), Path({root!r}), group_bytes={group_bytes})
""")


def test_killed_prepare_resumes_with_the_finished_groups(reference, corpus, tmp_path, capsys):
    reference_dir, _ = reference
    root = tmp_path / "datasets"
    script = KILLABLE_PREPARE.format(corpus=str(corpus), root=str(root), group_bytes=GROUP_BYTES)
    log = tmp_path / "killed-prepare.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob(".tmp-*/.groups/*.json")):  # the first finished group
            assert process.poll() is None, f"prepare ended before any group was finished:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no group finished within 120 s"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the driver and the local Ray it started
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (root / reference_dir.name).exists()  # killed mid-way

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        capsys.readouterr()
        dataset_dir = prepare_dataset(*configs(corpus), root, group_bytes=GROUP_BYTES)
    finally:
        ray.shutdown()
    reused = int(re.search(r"its tokenizer and (\d+) finished groups", capsys.readouterr().out).group(1))
    assert 1 <= reused < load_manifest(dataset_dir)["groups"]
    assert dataset_files(dataset_dir) == dataset_files(reference_dir)
    assert sorted(p.name for p in root.iterdir()) == [CACHE_FILE, reference_dir.name]  # nothing temporary left


def test_source_digests_are_reused_until_a_file_changes(corpus, tmp_path):
    sources = find_sources(str(corpus))
    first = digest_sources_cached(sources, "data.corpus", tmp_path)
    assert first == [digest_source(source) for source in sources]
    # A recorded digest is trusted while the file's size and times are unchanged: plant a
    # wrong one to see it returned without the file being read...
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    cache[str(sources[0].path)]["sha256"] = "0" * 64
    (tmp_path / CACHE_FILE).write_text(json.dumps(cache))
    assert digest_sources_cached(sources, "data.corpus", tmp_path)[0].sha256 == "0" * 64
    # ...and replaced once the file changes, or when asked to read everything again.
    assert digest_sources_cached(sources, "data.corpus", tmp_path, refresh=True) == first
    cache[str(sources[0].path)]["sha256"] = "0" * 64
    (tmp_path / CACHE_FILE).write_text(json.dumps(cache))
    time.sleep(0.01)
    os.utime(sources[0].path)  # a new modification time, as any rewrite gives
    assert digest_sources_cached(sources, "data.corpus", tmp_path) == first
