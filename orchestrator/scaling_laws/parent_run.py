"""The sweep's MLflow parent run; every trial's own run is its child (tag `mlflow.parentRunId`).

The parent holds the sweep's config as params, the fits and the verification as
metrics, and the trial records, report and recommended recipe as artifacts. Its
id is kept in the sweep directory, so a re-run of the same sweep continues it. A
tracking store that fails is a warning: the sweep's own files hold everything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from orchestrator.launch.tracking import MAX_PARAM_LENGTH, flatten

PARENT_FILE = "mlflow_parent.json"  # in the sweep directory: {"run_id", "tracking_uri"}


class ParentRun:
    def __init__(self, uri: str, experiment: str, sweep_name: str, sweep_dir: Path):
        self.uri = uri
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.state = sweep_dir / PARENT_FILE
        self.run_id = ""

    def open(self, config: dict[str, Any]) -> str:
        """Create the parent run, or continue the one this sweep directory names; returns its id ('' if none)."""
        # mlflow: imported when something is recorded (seconds of imports; workers and --help never need it)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(self.uri)
            previous = json.loads(self.state.read_text())["run_id"] if self.state.exists() else ""
            if previous:
                client.update_run(previous, status="RUNNING")
                self.run_id = previous
                return previous
            experiment = client.get_experiment_by_name(self.experiment)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment)
            run = client.create_run(
                experiment_id,
                run_name=self.sweep_name,
                tags={"orchestrator.stage": "sweep", "orchestrator.sweep": self.sweep_name},
            )
            self.run_id = run.info.run_id
            params = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in flatten(config).items()]
            for start in range(0, len(params), 100):
                client.log_batch(self.run_id, params=params[start : start + 100])
            self.state.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}))
        except Exception as err:  # noqa: BLE001 - the sweep goes on without its parent run
            print(f"sweep: warning: no MLflow parent run at {self.uri} ({err!s:.160})", flush=True)
        return self.run_id

    def finish(self, metrics: dict[str, float], artifacts: list[Path], status: str = "FINISHED") -> None:
        # mlflow: imported when something is recorded (seconds of imports; workers and --help never need it)
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        if not self.run_id:
            return
        try:
            client = MlflowClient(self.uri)
            now = int(time.time() * 1000)
            finite = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and v == v]
            if finite:
                client.log_batch(self.run_id, metrics=finite)
            for path in artifacts:
                if path.is_dir():
                    client.log_artifacts(self.run_id, str(path), path.name)
                elif path.exists():
                    client.log_artifact(self.run_id, str(path))
            client.set_terminated(self.run_id, status)
        except Exception as err:  # noqa: BLE001
            print(f"sweep: warning: could not finish MLflow run {self.run_id} at {self.uri} ({err!s:.160})", flush=True)
