"""MLflow on the driver: one run per pretrain job, continued when the job is resubmitted.

The driver records the config, tokenizer, data manifest and dataset input, then
forwards the step metrics that rank 0 appends to `<run dir>/metrics.jsonl`, and
at the end the final metrics and checkpoint. Everything goes through a
background thread that retries: when the tracking server is unreachable (at the
start or mid-run) training goes on, one warning says so, the metrics stay in the
local record, and they are sent when the server answers again (at the latest by
the next submission of the same run, which resumes from the forwarded offset).
Nothing from the process environment is ever recorded.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.sections import absolute
from workloads.data.shards import MANIFEST_FILE, TOKENIZER_FILE
from workloads.metrics_log import METRICS_FILE

# An unreachable server must fail a call at once: this module retries on its own schedule.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow's INFO lines (its database migrations, "Updating database tables") come from the client built in a
# background thread (client_in_background) and could land after a command's one-line error.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

MAX_PARAM_LENGTH = 6000  # MLflow's limit for one param value
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
FORWARDED_OFFSET_FILE = "metrics.forwarded"  # bytes of metrics.jsonl already in MLflow


def resolve_tracking_uri(configured: str) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def client_in_background(uri: str) -> Future:
    """A future MLflow client for `uri`, built in a thread.

    Importing MLflow and opening its store (for a database: connecting and checking its schema)
    take seconds of a launch; the driver starts them before Ray and collects the client once the
    run is to be opened. Building the client contacts no tracking server, so an unreachable one
    changes nothing here; any other error is raised by `result()`.
    """
    future: Future = Future()

    def build() -> None:
        try:
            # mlflow: seconds of imports, made in this thread while Ray starts
            from mlflow.tracking import MlflowClient

            future.set_result(MlflowClient(uri))
        except BaseException as err:  # noqa: BLE001 - handed to whoever collects the client
            future.set_exception(err)

    threading.Thread(target=build, name="mlflow-client", daemon=True).start()
    return future


def flatten(tree: dict[str, Any]) -> dict[str, str]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": "0.001"}; nested values beyond sections as JSON."""
    return {
        f"{section}.{key}": json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        for section, fields in tree.items()
        for key, value in fields.items()
    }


class RunRecorder:
    """Everything the driver sends to MLflow for one run, retried until the server answers."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        previous_run_id: str,
        tags: dict[str, str],
        config: dict[str, Any],
        dataset_dir: Path,
        manifest: dict[str, Any],
        run_dir: Path,
        on_run_opened: Callable[[str], None],
        retry_seconds: float = 2.0,
        client: Any = None,  # an MlflowClient for `uri` already built (client_in_background)
    ):
        if client is None:
            # mlflow: imported when a recorder opens (workers and --help never need it)
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
        self.uri = uri
        self.client = client
        self.run_id = ""
        self._experiment = experiment
        self._run_name = run_name
        self._previous_run_id = previous_run_id
        self._tags = tags
        self._config = config
        self._dataset_dir = dataset_dir
        self._manifest = manifest
        self._metrics_path = run_dir / METRICS_FILE
        self._offset_path = run_dir / FORWARDED_OFFSET_FILE
        self._on_run_opened = on_run_opened
        self._retry_seconds = retry_seconds
        self._failing = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- the public life cycle -------------------------------------------------
    def start(self) -> None:
        """Open the run now if the server answers, then keep forwarding in the background."""
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="mlflow-forwarder", daemon=True)
        self._thread.start()

    def finish(
        self, final_metrics: dict[str, float], step: int, tags: dict[str, str], status: str, timeout: float
    ) -> bool:
        """Send what is left and close the run; returns False if the server stayed away."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + timeout
        while True:
            if self.sync() and self._attempt(lambda: self._close(final_metrics, step, tags, status)):
                return True
            if time.monotonic() >= deadline:
                print(
                    f"warning: tracking server {self.uri} still unreachable; metrics are kept in "
                    f"{self._metrics_path} and will be sent by the next submission of this run"
                )
                return False
            time.sleep(self._retry_seconds)

    # -- one attempt at getting MLflow up to date --------------------------------
    def sync(self) -> bool:
        with self._lock:
            return self._attempt(self._sync_once)

    def _loop(self) -> None:
        while not self._stop.wait(self._retry_seconds):
            self.sync()

    def _attempt(self, action: Callable[[], Any]) -> bool:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - any failure means "try again later"
            if not self._failing:
                print(
                    f"warning: tracking server {self.uri} unreachable ({err!s:.160}); training goes on, "
                    "metrics are kept locally and sent when it is back"
                )
                self._failing = True
            return False
        if self._failing:
            print(f"tracking server {self.uri} reachable again: sending the metrics kept locally")
            self._failing = False
        return True

    def _sync_once(self) -> None:
        if not self.run_id:
            self._open_run()
        self._forward_metrics()

    def _open_run(self) -> None:
        resumed = False
        if self._previous_run_id:
            try:
                self.client.get_run(self._previous_run_id)
                resumed = True
            except Exception as err:  # noqa: BLE001
                if "RESOURCE_DOES_NOT_EXIST" not in str(err) and "not found" not in str(err).lower():
                    raise  # the server is away, not the run: try again later
        if resumed:
            run_id = self._previous_run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(self._experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self._experiment)
            run_id = self.client.create_run(experiment_id, run_name=self._run_name, tags=self._tags).info.run_id
            self._offset_path.unlink(missing_ok=True)  # a new MLflow run gets every metric of the record
        self._log_config(run_id, first_start=not resumed)
        if not resumed:
            self._log_dataset(run_id)
        self.run_id = run_id
        self._on_run_opened(run_id)

    def _log_config(self, run_id: str, first_start: bool) -> None:
        # mlflow: as in __init__
        from mlflow.entities import Param

        if first_start:  # MLflow params are write-once; a resumed job records its config as an artifact
            params = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in flatten(self._config).items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[start : start + 100])
        name = "config.yaml" if first_start else f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        self.client.log_text(run_id, yaml.safe_dump(self._config, sort_keys=False), name)

    def _log_dataset(self, run_id: str) -> None:
        # mlflow: as in __init__
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        self.client.log_artifact(run_id, str(self._dataset_dir / MANIFEST_FILE), "data")
        self.client.log_artifact(run_id, str(self._dataset_dir / TOKENIZER_FILE), "tokenizer")
        dataset = MetaDataset(
            LocalArtifactDatasetSource(str(self._dataset_dir)),
            name=self._dataset_dir.name,
            digest=self._manifest["dataset_hash"][:36],
        )
        context = InputTag(key="mlflow.data.context", value="training")
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[context])])

    def _forward_metrics(self) -> None:
        # mlflow: as in __init__
        from mlflow.entities import Metric

        if not self._metrics_path.exists():
            return
        offset = int(self._offset_path.read_text()) if self._offset_path.exists() else 0
        with self._metrics_path.open("rb") as record:
            record.seek(offset)
            chunk = record.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next round
        if not complete:
            return
        metrics = []
        for line in complete.decode().splitlines():
            entry = json.loads(line)
            step, stamp = entry.pop("step"), int(entry.pop("time") * 1000)
            metrics.extend(Metric(key, float(value), stamp, step) for key, value in entry.items())
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + METRICS_PER_BATCH])
        # Recorded only after MLflow took them: a failure above resends, it never skips.
        self._offset_path.write_text(str(offset + len(complete)))

    def _close(self, final_metrics: dict[str, float], step: int, tags: dict[str, str], status: str) -> None:
        # mlflow: as in __init__
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if final_metrics:
            self.client.log_batch(
                self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in final_metrics.items()]
            )
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        self.client.set_terminated(self.run_id, status)


def absolute_tracking_uri(configured: str) -> str:
    """The tracking URI with a relative sqlite database path (`sqlite:///x.db`) or plain path made absolute.

    Empty stays empty when $MLFLOW_TRACKING_URI is set (nothing from the environment is copied
    into the recorded config); otherwise it becomes the default database's absolute URI.
    """
    if not configured and os.environ.get("MLFLOW_TRACKING_URI"):
        return ""
    uri = resolve_tracking_uri(configured)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + absolute(uri.removeprefix("sqlite:///"))
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return absolute(uri)
    return uri
