"""Step metrics from rank 0: a local JSONL record, forwarded to MLflow in the background.

Training must never wait on, or die of, the tracking server: metrics are first
appended to `metrics.jsonl` in the run directory, then sent in batches by a
background thread. When the server is unreachable the thread warns once, keeps
the unsent metrics, and sends them when the server answers again.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

# A worker must not hang for minutes in MLflow's own retry loop; our thread retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

MLFLOW_BATCH_LIMIT = 1000  # metrics per log_batch call accepted by MLflow


class MetricsLog:
    def __init__(self, jsonl_path: Path, tracking_uri: str = "", run_id: str = "", retry_seconds: float = 2.0):
        self.jsonl_path = Path(jsonl_path)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._warned = False
        self._retry_seconds = retry_seconds
        self._client = None
        self._run_id = run_id
        self._thread = None
        if tracking_uri and run_id:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri)
            self._thread = threading.Thread(target=self._send_loop, name="metrics-to-mlflow", daemon=True)
            self._thread.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        with self.jsonl_path.open("a") as out:
            out.write(json.dumps({"step": step, "time": now_ms / 1000, **metrics}) + "\n")
        if self._client is not None:
            with self._lock:
                self._pending.extend((k, float(v), now_ms, step) for k, v in metrics.items())
            self._wake.set()

    def _send_loop(self) -> None:
        from mlflow.entities import Metric

        while True:
            self._wake.wait(timeout=self._retry_seconds)
            self._wake.clear()
            with self._lock:
                batch = self._pending[:MLFLOW_BATCH_LIMIT]
            if batch:
                try:
                    self._client.log_batch(self._run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in batch])
                except Exception as err:  # noqa: BLE001 - any failure means "try again later"
                    if not self._warned:
                        print(f"warning: tracking server unreachable, keeping metrics locally and retrying: {err!s:.200}")
                        self._warned = True
                    if self._closing:
                        return
                    time.sleep(self._retry_seconds)
                    continue
                with self._lock:
                    del self._pending[: len(batch)]
                    more = bool(self._pending)
                if self._warned:
                    print("tracking server reachable again: sent the metrics kept locally")
                    self._warned = False
                if more:
                    self._wake.set()
                    continue
            if self._closing:
                return

    def close(self, timeout: float = 30.0) -> int:
        """Send what is pending (waiting up to `timeout`); returns the count left unsent."""
        if self._thread is None:
            return 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    break
            self._wake.set()
            time.sleep(0.05)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        with self._lock:
            return len(self._pending)
