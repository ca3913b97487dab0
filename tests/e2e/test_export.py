"""`python -m orchestrator.export` on a real tiny checkpoint, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import transformers

from tests.helpers import REPO
from workloads.checkpoints.loading import load_checkpoint


def export(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process; cwd decides where MLflow puts artifacts of a sqlite store."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.export", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def text_ids(loaded) -> torch.Tensor:
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    return torch.tensor([loaded.tokenizer.encode(text)[: loaded.config.max_seq_len]])  # (1, max_seq_len)


def test_hf_export_loads_in_transformers_with_the_checkpoints_logits(tiny_checkpoint, loaded, text_ids, tmp_path):
    out = tmp_path / "hf"
    done = export(tiny_checkpoint, "--format", "hf", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial directory left behind

    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ours, hf = loaded.model(text_ids), theirs(text_ids).logits
    assert (ours - hf).abs().max().item() <= 1e-4 * ours.abs().max().item()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "def f(x):\n    return x  # caf\u00e9 \u4e2d\u6587\n"
    assert tokenizer.encode(text, add_special_tokens=False) == loaded.tokenizer.encode(text)


def test_safetensors_export_holds_the_checkpoints_weights(tiny_checkpoint, loaded, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "st"
    done = export(tiny_checkpoint, "--format", "safetensors", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tensors = load_file(out / "model.safetensors")
    state = loaded.model.state_dict()
    assert all(torch.equal(tensors[name], state[name]) for name in tensors)
    assert json.loads((out / "config.json").read_text())["d_model"] == loaded.config.d_model


def test_non_empty_out_is_refused_and_left_alone(tiny_checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = export(tiny_checkpoint, "--format", "hf", "--out", out, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --out:") and len(done.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_register_makes_a_new_version_per_export_that_mlflow_loads_as_a_pipeline(
    tiny_checkpoint, tmp_path, monkeypatch
):
    import mlflow
    import mlflow.transformers

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    for version in (1, 2):
        done = export(
            tiny_checkpoint,
            "--format",
            "hf",
            "--out",
            tmp_path / f"hf{version}",
            "--register",
            "tiny-gpt",
            "--tracking-uri",
            uri,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert f"models:/tiny-gpt/{version}" in done.stdout

    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name='tiny-gpt'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    # The training run lives in another store, so the exports were logged to runs of their own.
    run = client.get_run(versions[0].run_id)
    assert client.get_experiment(run.info.experiment_id).name == "export"
    assert run.data.tags["orchestrator.checkpoint"] == str(tiny_checkpoint)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what models:/ resolves against (nothing here sets it globally)
    pipeline = mlflow.transformers.load_model("models:/tiny-gpt/2")
    assert pipeline.task == "text-generation"
    generated = pipeline("def f(x):", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert generated.startswith("def f(x):") and len(generated) > len("def f(x):")


def test_register_needs_the_hf_format(tiny_checkpoint, tmp_path):
    done = export(tiny_checkpoint, "--format", "safetensors", "--out", tmp_path / "st", "--register", "x", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: --register:")
    assert not (tmp_path / "st").exists()
