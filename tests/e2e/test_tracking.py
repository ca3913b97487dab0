"""Tracking against a real `mlflow server` process: params, metrics, artifacts, dataset input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.helpers import ensure_local_ray, free_port, run_tiny, start_mlflow_server

pytestmark = pytest.mark.slow

PLANTED_SECRET = "planted-secret-" + "7f3a9c"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    port = free_port()
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tiny_dataset, tmp_path_factory):
    """A tiny run halted at step 10 and resubmitted, with a secret planted in the environment."""
    ensure_local_ray()
    output = tmp_path_factory.mktemp("tracked")
    os.environ["ORCHESTRATOR_TEST_API_KEY"] = PLANTED_SECRET
    try:
        run_tiny(tiny_dataset, output, mlflow_server, "--train.halt_at_step=10")
        first_id = json.loads((output / "tiny" / "run.json").read_text())["mlflow_run_id"]
        final = run_tiny(tiny_dataset, output, mlflow_server)
    finally:
        del os.environ["ORCHESTRATOR_TEST_API_KEY"]
    run_id = json.loads((output / "tiny" / "run.json").read_text())["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server), run_id, first_id, final, output


def test_resubmitted_job_continues_the_same_mlflow_run(tracked_run):
    client, run_id, first_id, _, _ = tracked_run
    assert run_id == first_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 21))


def test_params_hold_the_resolved_config(tracked_run, tiny_dataset):
    client, run_id, *_ = tracked_run
    params = client.get_run(run_id).data.params
    assert params["train.max_steps"] == "20"
    assert params["deepspeed.zero_stage"] == "1"
    assert params["scaling.num_workers"] == "1"
    assert params["data.corpus"] == str(tiny_dataset)
    assert params["model.d_model"] == "64"


def test_step_and_eval_metrics_are_recorded(tracked_run):
    client, run_id, *_ = tracked_run
    metrics = client.get_run(run_id).data.metrics
    for key in (
        "train/lr",
        "train/grad_norm",
        "perf/tokens_per_s",
        "perf/mfu",
        "eval/loss",
        "eval/ppl",
        "eval/bpb",
        "final/bpb",
        "final/loss",
    ):
        assert key in metrics, key
    assert 0 < metrics["perf/mfu"] < 1
    assert [m.step for m in client.get_metric_history(run_id, "eval/bpb")] == [10, 20]


def test_artifacts_and_dataset_input(tracked_run, tiny_dataset, tmp_path):
    client, run_id, _, final, _ = tracked_run
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "data", "tokenizer"} <= names
    assert any(a.path.startswith("config-resumed-") for a in client.list_artifacts(run_id))
    local_tokenizer = client.download_artifacts(run_id, "tokenizer/tokenizer.model", str(tmp_path))
    assert hashlib.sha256(Path(local_tokenizer).read_bytes()).hexdigest() == manifest["tokenizer"]["sha256"]
    (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs
    assert dataset_input.dataset.digest == manifest["dataset_hash"][:36]
    assert dataset_input.dataset.name == tiny_dataset.name
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    checkpoint = client.get_run(run_id).data.tags["orchestrator.final_checkpoint"]
    assert checkpoint == final["checkpoint"] and Path(checkpoint).is_dir()


def test_no_environment_secret_reaches_the_tracking_record(tracked_run, tmp_path):
    client, run_id, *_ = tracked_run
    run = client.get_run(run_id)
    recorded = json.dumps([run.data.params, run.data.tags])
    for artifact in ("config.yaml", "data/manifest.json"):
        recorded += Path(client.download_artifacts(run_id, artifact, str(tmp_path))).read_text()
    for artifact in client.list_artifacts(run_id):
        if artifact.path.startswith("config-resumed-"):
            recorded += Path(client.download_artifacts(run_id, artifact.path, str(tmp_path))).read_text()
    assert PLANTED_SECRET not in recorded
    assert "ORCHESTRATOR_TEST_API_KEY" not in recorded
