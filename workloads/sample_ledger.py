"""The sample-accounting record: which samples each rank trained on at each step.

Each data-reading rank appends one line per step to `<run dir>/samples/rank-NNNNN.jsonl`
(a few bytes per sample), and one `resumed_from` line whenever it starts from a
checkpoint. Steps after that checkpoint which an earlier, interrupted attempt had
already trained did not make it into the final weights: the resume line voids them.
What remains is the history that produced the final weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

LEDGER_DIR = "samples"


class SampleLedger:
    def __init__(self, run_dir: str | Path, rank: int, data_parallel_rank: int, resumed_from: int):
        directory = Path(run_dir) / LEDGER_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self._out = (directory / f"rank-{rank:05d}.jsonl").open("a", buffering=1)
        self._dp_rank = data_parallel_rank
        self._out.write(json.dumps({"t": time.time(), "resumed_from": resumed_from}) + "\n")

    def record(self, step: int, sample_ids: np.ndarray) -> None:
        entry = {"t": time.time(), "step": step, "dp_rank": self._dp_rank, "ids": sample_ids.tolist()}
        self._out.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        self._out.close()


def final_history(run_dir: str | Path) -> dict[int, np.ndarray]:
    """{step: the global batch's sample ids, in data-parallel rank order} as finally trained."""
    resumes, entries = [], []
    for ledger in sorted((Path(run_dir) / LEDGER_DIR).glob("rank-*.jsonl")):
        for line in ledger.read_text().splitlines():
            entry = json.loads(line)
            (resumes if "resumed_from" in entry else entries).append(entry)
    latest: dict[tuple[int, int], dict] = {}
    for entry in entries:
        voided = any(r["t"] > entry["t"] and entry["step"] > r["resumed_from"] for r in resumes)
        key = (entry["step"], entry["dp_rank"])
        if not voided and (key not in latest or entry["t"] >= latest[key]["t"]):
            latest[key] = entry
    history: dict[int, list[int]] = {}
    for step, dp_rank in sorted(latest):
        history.setdefault(step, []).extend(latest[(step, dp_rank)]["ids"])
    return {step: np.asarray(ids, dtype=np.int64) for step, ids in history.items()}
