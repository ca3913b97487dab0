"""Tracking against a real `mlflow server` process: params, metrics, artifacts, dataset input.

The run is conftest's tracked_run: the tiny recipe halted at step 7 and resubmitted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.helpers import PLANTED_SECRET

pytestmark = pytest.mark.slow


def test_resubmitted_job_continues_the_same_mlflow_run(tracked_run):
    client, run_id = tracked_run["client"], tracked_run["run_id"]
    assert run_id == tracked_run["first_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 21))


def test_params_hold_the_resolved_config(tracked_run, tiny_dataset):
    client, run_id = tracked_run["client"], tracked_run["run_id"]
    params = client.get_run(run_id).data.params
    assert params["train.max_steps"] == "20"
    assert params["deepspeed.zero_stage"] == "1"
    assert params["scaling.num_workers"] == "1"
    assert params["data.corpus"] == str(tiny_dataset)
    assert params["model.d_model"] == "64"


def test_step_and_eval_metrics_are_recorded(tracked_run):
    client, run_id = tracked_run["client"], tracked_run["run_id"]
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
    client, run_id, final = tracked_run["client"], tracked_run["run_id"], tracked_run["final"]
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
    client, run_id = tracked_run["client"], tracked_run["run_id"]
    run = client.get_run(run_id)
    recorded = json.dumps([run.data.params, run.data.tags])
    for artifact in ("config.yaml", "data/manifest.json"):
        recorded += Path(client.download_artifacts(run_id, artifact, str(tmp_path))).read_text()
    for artifact in client.list_artifacts(run_id):
        if artifact.path.startswith("config-resumed-"):
            recorded += Path(client.download_artifacts(run_id, artifact.path, str(tmp_path))).read_text()
    assert PLANTED_SECRET not in recorded
    assert "ORCHESTRATOR_TEST_API_KEY" not in recorded
