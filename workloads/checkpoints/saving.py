"""DeepSpeed checkpoints handed to Ray Train, restored from it, on any worker count.

Every rank saves its own DeepSpeed files (rank 0 the model states, every rank its
ZeRO optimizer shard) into a private temporary directory and reports it; Ray
merges the ranks' directories into one checkpoint in the run's storage and only
then registers it, so a checkpoint interrupted while being written is never the
one `ray.train.get_checkpoint()` returns. Rank 0 adds a small marker file saying
where training stood (step, samples consumed, data-parallel degree).

A checkpoint written by W data-parallel ranks under ZeRO 1-3 cannot be loaded by
W' != W ranks directly; it is then converted once to DeepSpeed's universal
format (model and optimizer state resharded, nothing dropped) and loaded from there.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from workloads.errors import UserInputError

MARKER_FILE = "training_state.json"
# Reported with every checkpoint: the step of the latest validation pass, so the driver can tell
# whether the reported validation loss was measured on exactly these weights.
EVAL_STEP_KEY = "eval_step"


@dataclass
class TrainingState:
    """Where training stood when a checkpoint was written."""

    step: int
    samples_consumed: int
    global_batch: int
    data_parallel: int
    pipeline_stages: int
    zero_stage: int

    @property
    def tag(self) -> str:
        return f"step{self.step:08d}"


def save_and_report(
    engine, state: TrainingState, metrics: dict[str, float], is_chief: bool, description: dict[str, bytes]
) -> None:
    """Save this rank's DeepSpeed files and hand them to Ray Train.

    `description` ({file name: content}) is written by the chief beside the weights:
    the files that make the checkpoint self-describing (model config, tokenizer).
    """
    staging = Path(tempfile.mkdtemp(prefix=f"ckpt-{state.tag}-"))
    try:
        engine.save_checkpoint(str(staging), tag=state.tag)
        if is_chief:
            (staging / MARKER_FILE).write_text(json.dumps(dataclasses.asdict(state)))
            for name, content in description.items():
                (staging / name).write_bytes(content)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staging)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def latest_state() -> TrainingState | None:
    """The state recorded in the latest committed checkpoint of this run, or None on a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return read_state(Path(directory))


def read_state(directory: Path) -> TrainingState:
    """The state recorded in a checkpoint directory (this run's or, for a branch, another run's)."""
    return TrainingState(**json.loads((Path(directory) / MARKER_FILE).read_text()))


def needs_resharding(saved: TrainingState, data_parallel: int, pipeline_stages: int) -> bool:
    """True when the saved ZeRO shards do not match this worker layout."""
    if saved.pipeline_stages != pipeline_stages:
        raise UserInputError(
            f"parallel.pipeline_stages={pipeline_stages} but the checkpoint was written with {saved.pipeline_stages} "
            "stages; resume with the same pipeline layout"
        )
    if saved.data_parallel == data_parallel or saved.zero_stage == 0:
        return False  # ZeRO 0 saves whole optimizer states: any data-parallel degree can load them
    if pipeline_stages > 1:
        raise UserInputError(
            f"the checkpoint was written by {saved.data_parallel} data-parallel ranks, now {data_parallel}: "
            "changing the data-parallel degree of a pipeline run is not supported"
        )
    return True


@dataclass
class ResumePoint:
    """Where a worker's training continues: this run's latest checkpoint, else (a branch, before its own first
    checkpoint) its origin's, else the start. Every training loop finds it the same way."""

    saved: TrainingState | None  # this run's latest registered checkpoint
    origin: Path | None  # a branch's origin checkpoint, while the branch has none of its own
    start: TrainingState | None  # what training continues from: `saved` or the origin's state
    reshard: bool  # the saved shards are of another worker layout: convert to universal, load resharded

    @classmethod
    def find(cls, data_parallel: int, pipeline_stages: int, branch_from: str = "") -> ResumePoint:
        saved = latest_state()
        origin = Path(branch_from) if saved is None and branch_from else None
        start = saved or (read_state(origin) if origin else None)
        reshard = start is not None and needs_resharding(start, data_parallel, pipeline_stages)
        return cls(saved, origin, start, reshard)

    @property
    def step(self) -> int:
        return self.start.step if self.start else 0

    @property
    def samples_consumed(self) -> int:
        """Stream position of the next sample: resuming continues exactly there, whatever the layout now."""
        return self.start.samples_consumed if self.start else 0

    def engine_overrides(self) -> dict[str, Any] | None:
        """DeepSpeed config entries the engine must be built with to load this point."""
        return universal_config() if self.reshard else None

    def restore(self, engine, run_dir: Path, rank: int) -> None:
        """Load the point into `engine` (built with `engine_overrides()`); nothing on a fresh start."""
        universal_root = Path(run_dir) / "universal"
        if self.saved:
            restore(engine, self.saved, universal_root, self.reshard, rank)
        elif self.origin:
            restore_branch(engine, self.origin, self.start, universal_root, self.reshard, rank)

    def describe(self) -> str:
        if self.saved:
            return f"resumed from step {self.step}"
        return f"branched from {self.origin} at step {self.step}" if self.origin else "from scratch"


def restore(engine, saved: TrainingState, universal_root: Path, reshard: bool, rank: int) -> None:
    """Load the latest checkpoint into `engine` (built with load_universal when `reshard`)."""
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() as directory:
        _load(engine, Path(directory), saved, universal_root, reshard, rank, load_lr_schedule=True)


def restore_branch(engine, origin: Path, saved: TrainingState, universal_root: Path, reshard: bool, rank: int) -> None:
    """Start from another run's checkpoint: its weights and optimizer state, this run's schedule.

    The learning-rate scheduler's state is not loaded: the branch follows its own schedule
    (e.g. a cooldown), placed at the step it starts from.
    """
    _load(engine, origin, saved, universal_root, reshard, rank, load_lr_schedule=False)
    start_schedule_at(engine, saved.step)


def start_schedule_at(engine, step: int) -> None:
    """Put the engine's LambdaLR where `step` optimizer steps would have left it.

    That is last_epoch = step and every group at base lr x multiplier(step), exactly as after
    `step` calls of scheduler.step(); set directly, since stepping a scheduler before its
    optimizer has stepped is what torch warns about.
    """
    scheduler = engine.lr_scheduler
    scheduler.last_epoch = step
    rates = [base * rule(step) for base, rule in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() returns until the next step


def _load(
    engine,
    directory: Path,
    saved: TrainingState,
    universal_root: Path,
    reshard: bool,
    rank: int,
    load_lr_schedule: bool,
) -> None:
    if not reshard:
        load_path, _ = engine.load_checkpoint(str(directory), tag=saved.tag, load_lr_scheduler_states=load_lr_schedule)
    else:
        target = universal_root / saved.tag
        if rank == 0:
            convert_to_universal(directory / saved.tag, target)
        dist.barrier()  # every rank loads only once rank 0's conversion is complete
        built_settings = _built_group_settings(engine)
        load_path, _ = engine.load_checkpoint(
            str(universal_root), tag=saved.tag, load_lr_scheduler_states=load_lr_schedule
        )
        _repair_universal_load(engine, built_settings)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(universal_root, ignore_errors=True)
    if load_path is None:
        raise RuntimeError(f"{directory} holds no loadable DeepSpeed checkpoint {saved.tag}")


def convert_to_universal(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(source),
            "--output_folder",
            str(target),
            "--inject_missing_state",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"universal checkpoint conversion of {source} failed:\n{done.stderr[-2000:]}")


def _built_group_settings(engine) -> list[dict[str, Any]]:
    """The optimizer's per-group hyperparameters as built from the config, all but the lr.

    The lr is where the schedule stood: that one the checkpoint knows (and restores).
    """
    return [
        {key: value for key, value in group.items() if key not in ("params", "lr")}
        for group in engine.optimizer.optimizer.param_groups
    ]


def _repair_universal_load(engine, built_settings: list[dict[str, Any]]) -> None:
    """Undo what DeepSpeed's ZeRO-3 universal loader (0.19) gets wrong about the optimizer.

    It copies the first param group's settings onto every group, so the norm gains, built
    with weight decay 0, would be decayed from the first step after the resume; each group
    gets its own settings back. ZeRO 1 and 2 load them right already: this changes nothing there.
    """
    optimizer = engine.optimizer.optimizer
    for group, settings in zip(optimizer.param_groups, built_settings, strict=True):
        group.update(settings)
    _unshare_step_counters(optimizer)


def _unshare_step_counters(optimizer) -> None:
    """Give the state of every parameter partition its own step counter.

    The ZeRO-3 loader puts one step tensor into the state of every sub-group and AdamW increments
    it in place once per sub-group, so Adam's bias correction would run ahead by the number of
    sub-groups with every step.
    """
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def universal_config() -> dict[str, Any]:
    """DeepSpeed config entries for loading a universal checkpoint."""
    return {"checkpoint": {"load_universal": True}}
