"""The chain's driver: every registered stage in order, one command (`orchestrator.rlhf`).

Each stage runs with its own recipe and overrides (the `chain.` section: one field per stage of the
registry, `orchestrator.stages.registry`) as a nested child run under one MLflow parent run. A stage's
output is addressed by a hash of its recipe, its overrides and the hashes of every stage before it: its
run is named `<stage>-<hash>`. Running the chain again therefore skips the stages that finished, resumes
an interrupted one (same run name: it continues from its latest checkpoint), and re-runs a stage whose
config or inputs changed together with every stage after it. Each stage starts from the final checkpoint
of the stage its driver names (`starts_from`: SFT from pretrain, the reward model, DPO, PPO and GRPO from
SFT, as InstructGPT does) and takes what else its driver asks of the stages before it (`chain_overrides`:
PPO's reward model). Stages get config objects, built from their recipe files and overrides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.config.parser import RECIPE_DIR, parse_tree
from orchestrator.config.sections import TrackingConfig
from orchestrator.config.tree import ConfigTree
from orchestrator.launch.tracking import resolve_tracking_uri
from orchestrator.stages.base import StageDriver
from orchestrator.stages.registry import DRIVERS
from workloads.errors import UserInputError
from workloads.schema import option
from workloads.train_config import CADENCE_FIELDS

STATE_FILE = "chain.json"
DEFAULT_RECIPE = "tiny"  # a stage's recipe when the chain's section names none
SUMMARY = "The whole path in one command, pretrain -> SFT -> reward model -> DPO -> PPO -> GRPO."


@dataclass
class ChainRunConfig:
    """Where the chain keeps its stages' runs and its own record."""

    name: str = option(
        "rlhf", "chain name: its record is <output_dir>/<name>/chain.json, its MLflow parent run this name"
    )
    output_dir: str = option("runs", "root of every stage's run directory and of the prepared datasets")

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise UserInputError(f"run.name: '{self.name}' must be a non-empty name without '/'")


class ChainStages:
    """The stages, in order, each `{config: RECIPE, overrides: {section.field: value}}`."""

    drivers: ClassVar[Mapping[str, StageDriver]]  # the registry the section was made from
    stages: list

    def validate(self) -> None:
        names = list(self.drivers)
        stages = list(self.stages)
        in_order = all(s in self.drivers for s in stages) and stages == sorted(set(stages), key=names.index)
        if not stages or not in_order:
            raise UserInputError(f"chain.stages: {self.stages} must name stages of {', '.join(names)}, in that order")
        for index, stage in enumerate(stages):
            start = self.drivers[stage].starts_from
            if start and start not in stages[:index]:
                raise UserInputError(f"chain.stages: {stage} starts from {start}'s checkpoint; list {start} before it")
            spec = getattr(self, stage)
            unknown = set(spec) - {"config", "overrides"}
            if unknown or not isinstance(spec.get("overrides", {}), dict):
                raise UserInputError(f"chain.{stage}: takes 'config' and an 'overrides' mapping, got {spec}")


def chain_tree(drivers: Mapping[str, StageDriver] = DRIVERS) -> type[ConfigTree]:
    """The chain's config tree for a registry of stages: its `chain.` section has one field per stage."""
    fields: list[tuple[str, type, Any]] = [
        ("stages", list, option(list(drivers), f"stages to run, in order (of {', '.join(drivers)})"))
    ]
    for name, driver in drivers.items():
        start = f"; starts from {driver.starts_from}'s final checkpoint" if driver.starts_from else ""
        fields.append((name, dict, option({"config": DEFAULT_RECIPE}, f"{name}'s recipe and overrides{start}")))
    section = dataclasses.make_dataclass(
        "ChainConfig", fields, bases=(ChainStages,), namespace={"__doc__": ChainStages.__doc__, "drivers": drivers}
    )
    return dataclasses.make_dataclass(
        "RLHFConfig",
        [
            ("run", ChainRunConfig, dataclasses.field(default_factory=ChainRunConfig)),
            ("chain", section, dataclasses.field(default_factory=section)),
            ("tracking", TrackingConfig, dataclasses.field(default_factory=TrackingConfig)),
        ],
        bases=(ConfigTree,),
        namespace={"__doc__": "The whole tree of a chain."},
    )


def parse_cli(argv: list[str] | None, drivers: Mapping[str, StageDriver] = DRIVERS) -> ConfigTree:
    return parse_tree(
        chain_tree(drivers), argv, "orchestrator.rlhf", SUMMARY, default_recipe="tiny", recipe_dir=RECIPE_DIR / "rlhf"
    )


def stage_overrides(
    cfg: ConfigTree, stage: str, run_name: str, finished: Mapping[str, Mapping[str, Any]], tracking_uri: str
) -> dict[str, Any]:
    """What the chain sets on a stage's recipe: where it runs and is tracked, what the stage's driver takes from
    the stages `finished` before it, the stage's own overrides, and last (never overridden) its starting model."""
    driver = cfg.chain.drivers[stage]
    own = getattr(cfg.chain, stage).get("overrides", {})
    overrides = {
        "run.name": run_name,
        "run.output_dir": cfg.run.output_dir,
        "tracking.uri": tracking_uri,
        "tracking.experiment": cfg.tracking.experiment,
    }
    overrides.update(driver.chain_overrides(finished, own))
    overrides.update(own)
    if driver.starts_from:
        overrides["model.init_from"] = finished[driver.starts_from]["checkpoint"]
    return overrides


def stage_key(cfg: ConfigTree, stage: str, previous_key: str) -> str:
    """Hash of the stage's recipe and overrides and of the stages before it; cadence overrides
    (logging, evaluation, checkpoints, halting) change no result and are left out."""
    spec = getattr(cfg.chain, stage)
    overrides = {
        key: value
        for key, value in spec.get("overrides", {}).items()
        if not (key.startswith("train.") and key.removeprefix("train.") in CADENCE_FIELDS)
    }
    text = json.dumps(
        {
            "stage": stage,
            "config": spec.get("config", DEFAULT_RECIPE),
            "overrides": overrides,
            "previous": previous_key,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def open_parent_run(cfg: ConfigTree, uri: str, record: dict[str, Any]) -> str:
    # mlflow: imported when something is recorded (seconds of imports; workers and --help never need it)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if record.get("parent_run_id"):
        try:
            client.get_run(record["parent_run_id"])
            client.update_run(record["parent_run_id"], status="RUNNING")
            return record["parent_run_id"]
        except Exception:  # noqa: BLE001 - another tracking store: start a new parent run
            pass
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.tracking.experiment)
    run = client.create_run(experiment_id, run_name=cfg.run.name, tags={"orchestrator.stage": "rlhf"})
    client.log_dict(run.info.run_id, dataclasses.asdict(cfg), "chain.json")
    return run.info.run_id


def run_chain(cfg: ConfigTree) -> dict[str, dict[str, Any]]:
    """Run what is not finished; returns {stage: {run_name, checkpoint, metrics, skipped}}."""
    # mlflow: imported when something is recorded (seconds of imports; workers and --help never need it)
    from mlflow.tracking import MlflowClient

    started = time.perf_counter()
    home = Path(cfg.run.output_dir).resolve() / cfg.run.name
    home.mkdir(parents=True, exist_ok=True)
    record_path = home / STATE_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {"stages": {}}
    uri = resolve_tracking_uri(cfg.tracking.uri)
    parent = record["parent_run_id"] = open_parent_run(cfg, uri, record)
    record_path.write_text(json.dumps(record, indent=2))
    print(f"rlhf: chain '{cfg.run.name}' | MLflow parent run {parent} at {uri}")

    client = MlflowClient(uri)
    outcome: dict[str, dict[str, Any]] = {}
    key = ""
    for stage in cfg.chain.stages:
        key = stage_key(cfg, stage, key)
        run_name = f"{stage}-{key}"
        done = record["stages"].get(stage, {})
        if done.get("key") == key and done.get("status") == "finished" and Path(done["checkpoint"]).exists():
            print(f"rlhf: {stage}: finished already as {run_name} (nothing to do)")
            outcome[stage] = {**done, "skipped": True}
            continue
        driver = cfg.chain.drivers[stage]
        spec = getattr(cfg.chain, stage)
        print(f"rlhf: {stage}: running {run_name}")
        stage_cfg = driver.load(spec.get("config", DEFAULT_RECIPE), stage_overrides(cfg, stage, run_name, outcome, uri))
        final = driver.run(stage_cfg, parent_run_id=parent)
        if final.get("step", 0) < stage_cfg.train.max_steps:
            print(
                f"rlhf: {stage}: stopped at step {final.get('step')} before its last step; run the chain again "
                "to resume it"
            )
            client.set_terminated(parent, "KILLED")
            return outcome
        metrics = {k: v for k, v in final.items() if isinstance(v, float)}
        record["stages"][stage] = {
            "key": key,
            "run_name": run_name,
            "status": "finished",
            "checkpoint": final["checkpoint"],
            "mlflow_run_id": final.get("mlflow_run_id", ""),
            "metrics": metrics,
        }
        record_path.write_text(json.dumps(record, indent=2))  # a finished stage is never run again
        outcome[stage] = {**record["stages"][stage], "skipped": False}

    client.log_dict(parent, outcome, "stages.json")
    client.log_metric(parent, "run/wall_s", time.perf_counter() - started)
    client.set_terminated(parent, "FINISHED")
    for stage, result in outcome.items():
        shown = {k: round(v, 4) for k, v in result["metrics"].items() if k.startswith(("eval/", "task/", "heldout/"))}
        print(f"rlhf: {stage}: {result['run_name']}{' (skipped)' if result['skipped'] else ''} | {shown}")
    print(f"rlhf: done in {time.perf_counter() - started:.0f} s")
    return outcome
