"""Running real pretrain jobs from tests and reading back what they recorded."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.pretrain import parse_cli, pretrain


def ensure_local_ray() -> None:
    """A private local Ray with 2 CPUs (never a cluster some other process started)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)


def run_tiny(dataset: Path, output_dir: Path, tracking_uri: str, *overrides: str) -> dict:
    """One real pretrain job on the prepared tiny dataset (a local Ray must be running)."""
    cfg = parse_cli(
        ["--config", "tiny", f"--data.corpus={dataset}", f"--run.output_dir={output_dir}",
         f"--tracking.uri={tracking_uri}", *overrides]
    )
    return pretrain(cfg)


def step_metrics(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """{step: value} from the run's local metrics record; a resumed run's later lines win."""
    values: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            values[record["step"]] = record[key]
    return values
