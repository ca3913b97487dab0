"""MLflow on the driver: one run per pretrain job, continued when the job is resubmitted.

The driver records what it knows before training (config, tokenizer, data
manifest, dataset input) and after (final metrics, checkpoint location); the
workers' rank 0 streams step metrics into the same run (`workloads.metrics_log`).
Nothing from the process environment is ever recorded.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server must not stall the driver
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

MAX_PARAM_LENGTH = 6000  # MLflow's limit for one param value


def resolve_tracking_uri(configured: str) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return flat


class Tracker:
    """A thin, failure-tolerant handle on one MLflow run."""

    def __init__(self, uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        self.experiment = experiment
        self.run_id = ""
        self.available = True

    def _attempt(self, what: str, fn, *args, **kwargs):
        if not self.available:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            print(f"warning: tracking ({what}) failed, training goes on without it: {err!s:.200}")
            self.available = False
            return None

    def start(self, run_name: str, previous_run_id: str, tags: dict[str, str]) -> tuple[str, bool]:
        """Continue `previous_run_id` if the store has it, else create a run. Returns (run_id, resumed)."""

        def open_run() -> tuple[str, bool]:
            if previous_run_id:
                try:
                    run = self.client.get_run(previous_run_id)
                    self.client.update_run(run.info.run_id, status="RUNNING")
                    return run.info.run_id, True
                except Exception:  # noqa: BLE001 - gone from this store: start a new record
                    pass
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
            return run.info.run_id, False

        opened = self._attempt("start run", open_run)
        if opened is None:
            return "", False
        self.run_id = opened[0]
        return opened

    def log_config(self, config: dict[str, Any], first_start: bool) -> None:
        from mlflow.entities import Param

        def log() -> None:
            if first_start:  # MLflow params are write-once; a resumed job records its config as an artifact
                params = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in flatten(config).items()]
                for start in range(0, len(params), 100):
                    self.client.log_batch(self.run_id, params=params[start : start + 100])
            name = "config.yaml" if first_start else f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
            self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False), name)

        self._attempt("log config", log)

    def log_dataset(self, dataset_dir: Path, manifest: dict[str, Any]) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        def log() -> None:
            self.client.log_artifact(self.run_id, str(dataset_dir / "manifest.json"), "data")
            self.client.log_artifact(self.run_id, str(dataset_dir / "tokenizer.model"), "tokenizer")
            dataset = MetaDataset(
                LocalArtifactDatasetSource(str(dataset_dir)), name=dataset_dir.name, digest=manifest["dataset_hash"][:36]
            )
            context = InputTag(key="mlflow.data.context", value="training")
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[context])])

        self._attempt("log dataset", log)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._attempt("log metrics", self.client.log_batch, self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._attempt("set tag", self.client.set_tag, self.run_id, key, value)

    def finish(self, status: str) -> None:
        self._attempt("end run", self.client.set_terminated, self.run_id, status)
