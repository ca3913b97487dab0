"""Training a sweep's trials with Ray Tune, as many at once as the cluster holds.

Each trial is a Tune function trainable (`trial_trainable`) that rebuilds its pretrain
config from the serialised one in its Tune config and runs the pretrain driver
(`orchestrator.stages.pretrain.PRETRAIN`), which fits a Ray Train `TorchTrainer` (Ray 2.60's
Train V2 pattern for Tune: `Tuner(TorchTrainer)` is refused). Ray Train's
`TuneReportCallback` passes every evaluation on to Tune. The trainable itself
holds only `TRAINABLE_CPUS` while its trainer's workers hold their own CPUs, and
no more trials run at once than the cluster fits whole, so trials queue on a small
machine and never hold CPUs their workers wait for.

Order and dependencies live in `DependencySearcher`, a Tune searcher that hands
out a trial only once it can start: a size's trials after its learning-rate
search, a WSD branch once the run it branches from has registered the checkpoint
it starts from (while that run goes on training).
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import Searcher

from orchestrator.config.parser import tree_from_dict
from orchestrator.scaling_laws.grid import TrialSpec
from orchestrator.scaling_laws.trial_records import (
    CRASHED,
    FAILED,
    OK,
    assess,
    curve,
    is_finished,
    read_record,
    timing,
    write_record,
)
from orchestrator.stages.pretrain import PRETRAIN, PretrainConfig
from workloads.checkpoints.loading import RAY_SNAPSHOT_FILE, TRAIN_STORAGE
from workloads.errors import UserInputError

# CPUs the Tune trainable holds while its TorchTrainer trains (it only waits): Tune refuses 0.
TRAINABLE_CPUS = 0.1
SKIP = "skip"  # a trial that needs no training now: its record is written (taken over, or failed)


def one_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit]


def trial_trainable(config: dict[str, Any]) -> None:
    """Tune function trainable: one pretrain run, then its record in its run directory."""

    started = time.time()
    run_dir = Path(config["run_dir"])
    origin_run_dir = Path(config["origin_run_dir"]) if config["origin_run_dir"] else None
    record = {**config["record"], "status": CRASHED, "reason": "", "loss": None, "bpb": None}
    try:
        cfg = tree_from_dict(PretrainConfig, config["pretrain"])
        final = PRETRAIN.run(cfg, tags=config["tags"], callbacks=[TuneReportCallback()])
        status, reason = assess(run_dir, final, origin_run_dir)
        record.update(
            status=status,
            reason=reason,
            loss=final.get("eval/loss"),
            bpb=final.get("eval/bpb"),
            mlflow_run_id=final.get("mlflow_run_id", ""),
        )
    except Exception as err:  # noqa: BLE001 - a trial that crashes is recorded; the sweep goes on
        traceback.print_exc()
        record["reason"] = one_line(err)
    tokens_per_step = config["tokens_per_step"]
    head = curve(origin_run_dir, tokens_per_step, config["branch_step"]) if origin_run_dir else []
    record["curve"] = head + curve(run_dir, tokens_per_step)
    record["timing"] = timing(run_dir, started, time.time(), config["cpus"])
    write_record(run_dir, record)


def registered_checkpoint(run_dir: Path, step: int) -> Path | None:
    """The checkpoint of `step` once Ray Train has registered it for the run in `run_dir`."""
    storage = Path(run_dir) / TRAIN_STORAGE
    try:
        snapshot = json.loads((storage / RAY_SNAPSHOT_FILE).read_text())
    except (OSError, ValueError):
        return None  # not yet written (or being rewritten): ask again later
    for result in snapshot.get("checkpoint_results", []):
        if result.get("metrics", {}).get("step") == step:
            return storage / result["checkpoint_dir_name"]
    return None


def best_multiplier(search: list[dict[str, Any]]) -> float:
    """The multiplier of the lowest final loss among the search's successful trials (1 if none succeeded)."""
    ok = [r for r in search if r["status"] == OK]
    return min(ok, key=lambda r: r["loss"])["lr_multiplier"] if ok else 1.0


@dataclass
class Plan:
    """The trials of one invocation and what each waits for; builds each trial's launch when it may start."""

    specs: dict[str, TrialSpec]
    trials_dir: Path
    launch: Any  # callable(spec, lr_multiplier, branch checkpoint) -> the trainable's config
    on_record: Any  # callable(name, record), told of every record as it is written or found
    # Trials this invocation still has to end: a record they left in an earlier invocation (crashed) is stale.
    pending: set[str] = field(default_factory=set)

    def run_dir(self, name: str) -> Path:
        return self.trials_dir / name

    def record(self, name: str) -> dict[str, Any] | None:
        return read_record(self.run_dir(name))

    def decide(self, name: str) -> dict[str, Any] | str | None:
        """The trainable's config if `name` may start now, SKIP if it needs no training, None to wait."""
        spec = self.specs[name]
        if self.pending & set(spec.lr_search):
            return None  # its search has yet to end in this invocation (a record left by an earlier one is stale)
        multiplier = spec.lr_multiplier
        if spec.lr_search:
            search = [self.record(n) for n in spec.lr_search]
            if not all(r is not None and r["status"] != CRASHED for r in search):
                if any(r is not None and r["status"] == CRASHED for r in search):
                    return self._fail(spec, CRASHED, "not run: its learning-rate search crashed (re-run the sweep)")
                return None
            multiplier = best_multiplier(search)
            if spec.reuse_search:
                return self._take_over(spec, next(r for r in search if r["lr_multiplier"] == multiplier))
        origin = None
        if spec.branch_of:
            origin = registered_checkpoint(self.run_dir(spec.branch_of), spec.branch_step)
            if origin is None:
                parent = self.record(spec.branch_of)
                if parent is None or spec.branch_of in self.pending:
                    return None
                status = FAILED if is_finished(parent) else CRASHED
                return self._fail(
                    spec,
                    status,
                    f"not run: {spec.branch_of} ended ({parent['status']}) without a "
                    f"checkpoint at step {spec.branch_step} to branch from",
                )
        try:
            return self.launch(spec, multiplier, origin)
        except UserInputError as err:  # a trial pretrain would refuse fails alone; the sweep goes on
            return self._fail(spec, FAILED, f"not run: {err}")

    def _take_over(self, spec: TrialSpec, search: dict[str, Any]) -> str:
        """The grid trial is the search trial at the best rate: the same run, recorded under its own name."""
        record = {
            **search,
            **spec.describe(),
            "lr_multiplier": search["lr_multiplier"],
            "taken_from": search["name"],
            "trained_flops": 0.0,
            "timing": {},
        }
        self._write(spec.name, record)
        return SKIP

    def _fail(self, spec: TrialSpec, status: str, reason: str) -> str:
        self._write(
            spec.name,
            {
                **spec.describe(),
                "status": status,
                "reason": reason,
                "loss": None,
                "curve": [],
                "trained_flops": 0.0,
                "timing": {},
            },
        )
        return SKIP

    def _write(self, name: str, record: dict[str, Any]) -> None:
        write_record(self.run_dir(name), record)
        self.pending.discard(name)
        self.on_record(name, record)

    def completed(self, name: str, error: bool) -> None:
        record = self.record(name)
        if record is None:  # the trainable itself died (e.g. killed for memory) before writing one
            spec = self.specs[name]
            record = {
                **spec.describe(),
                "status": CRASHED,
                "reason": "the trial's process died",
                "loss": None,
                "curve": [],
                "trained_flops": 0.0,
                "timing": {},
            }
            write_record(self.run_dir(name), record)
        self.pending.discard(name)
        self.on_record(name, record)


class DependencySearcher(Searcher):
    """Hands Tune the trials in design order, each once what it depends on is there."""

    def __init__(self, plan: Plan, names: list[str]):
        super().__init__()  # no metric: it orders trials, it optimises nothing
        self.plan = plan
        self.waiting = list(names)
        self.running: dict[str, str] = {}  # Tune trial id -> trial name

    def suggest(self, trial_id: str):
        for name in list(self.waiting):
            decision = self.plan.decide(name)
            if decision is None:
                continue
            self.waiting.remove(name)
            if decision == SKIP:
                continue
            self.running[trial_id] = name
            return decision
        return Searcher.FINISHED if not self.waiting else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        name = self.running.pop(trial_id, None)
        if name is not None:
            self.plan.completed(name, error)

    def save(self, checkpoint_path: str) -> None:
        pass  # a re-run reads the trials' own records instead of Tune's state

    def restore(self, checkpoint_path: str) -> None:
        pass


def trial_slots(base, cluster: dict[str, float]) -> int:
    """Trials that fit the cluster at once: each holds its workers' CPUs (and GPUs) plus its trainable's share."""
    per_trial = base.scaling.num_workers * base.scaling.cpus_per_worker + TRAINABLE_CPUS
    slots = math.floor(cluster.get("CPU", 0.0) / per_trial + 1e-9)
    if base.scaling.use_gpu:
        slots = min(slots, math.floor(cluster.get("GPU", 0.0) / base.scaling.num_workers + 1e-9))
    return slots


def run_trials(plan: Plan, names: list[str], slots: int, storage: Path, label: str) -> None:
    """Train `names` (those that need training) under one Tune run; returns when every one has a record."""
    if not names:
        return
    plan.pending = set(names)
    tuner = tune.Tuner(
        tune.with_resources(trial_trainable, {"cpu": TRAINABLE_CPUS}),
        tune_config=tune.TuneConfig(
            search_alg=DependencySearcher(plan, names),
            num_samples=len(names),
            max_concurrent_trials=slots,
            trial_name_creator=lambda trial: trial.config["name"],
            trial_dirname_creator=lambda trial: trial.config["name"],
        ),
        run_config=tune.RunConfig(
            name=f"{label}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()
