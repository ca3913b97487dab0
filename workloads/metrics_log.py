"""Step metrics from rank 0, appended to `metrics.jsonl` in the run directory.

The worker only writes this local record: the driver forwards it to MLflow
(`orchestrator.tracking.RunRecorder`), so training never waits on, or dies of, the
tracking server, and nothing is lost while that server is away.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"  # in the run directory


class MetricsLog:
    def __init__(self, jsonl_path: Path):
        self.jsonl_path = Path(jsonl_path)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered: each record reaches the file (and the driver) as soon as it is written.
        self._out = self.jsonl_path.open("a", buffering=1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._out.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")

    def close(self) -> None:
        self._out.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl in order ([] before the first); a line cut short by a kill is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines
