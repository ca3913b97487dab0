"""DeepSpeed checkpoints handed to Ray Train, and restored from it.

Every rank saves its own DeepSpeed files (rank 0 the model states, every rank its
ZeRO optimizer shard) into a private temporary directory and reports it; Ray
merges the ranks' directories into one checkpoint in the run's storage, and
`ray.train.get_checkpoint()` returns the latest one after a restart or resubmit.
"""
from __future__ import annotations

import shutil
import tempfile
from typing import Any

import ray.train


def save_and_report(engine, step: int, client_state: dict[str, Any], metrics: dict[str, float]) -> None:
    staging = tempfile.mkdtemp(prefix=f"ckpt-step{step}-")
    try:
        engine.save_checkpoint(staging, tag=f"step{step:08d}", client_state=client_state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_latest(engine) -> dict[str, Any] | None:
    """Load the latest reported checkpoint into `engine`; returns its client state, or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        load_path, client_state = engine.load_checkpoint(directory)
    if load_path is None:
        raise RuntimeError(f"checkpoint {checkpoint.path} holds no DeepSpeed checkpoint that could be loaded")
    return client_state
