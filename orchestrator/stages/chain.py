"""The chain's driver: pretrain -> SFT -> reward model -> DPO -> PPO -> GRPO in one command (`orchestrator.rlhf`).

Each stage runs with its own recipe and overrides (the `chain.` section) as a nested
child run under one MLflow parent run. A stage's output is addressed by a hash of its
recipe, its overrides and the hashes of every stage before it: its run is named
`<stage>-<hash>`. Running the chain again therefore skips the stages that finished,
resumes an interrupted one (same run name: it continues from its latest checkpoint),
and re-runs a stage whose config or inputs changed together with every stage after it.
SFT, the reward model and DPO start from the SFT-side checkpoints as InstructGPT does:
SFT from pretrain, the reward model and DPO from SFT. PPO and GRPO start from SFT too, so that
their results compare with DPO's; PPO's reward is the chain's reward model (unless its
overrides name a reward), GRPO's the reward its recipe names (the built-in task's rule).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.parser import RECIPE_DIR, parse_tree
from orchestrator.config.sections import TrackingConfig
from orchestrator.launch.tracking import resolve_tracking_uri
from orchestrator.stages.finetuning import parse_stage_cli, run_stage
from orchestrator.stages.pretrain import parse_cli as parse_pretrain
from orchestrator.stages.pretrain import pretrain
from orchestrator.stages.rl import parse_rl_cli, run_rl
from workloads.errors import UserInputError
from workloads.schema import option
from workloads.train_config import CADENCE_FIELDS

STAGE_ORDER = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")
STARTS_FROM = {"sft": "pretrain", "reward": "sft", "dpo": "sft", "ppo": "sft", "grpo": "sft"}
RL_STAGES = ("ppo", "grpo")
STATE_FILE = "chain.json"
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


@dataclass
class ChainConfig:
    """The stages, in order, each `{config: RECIPE, overrides: {section.field: value}}`."""

    stages: list = option(list(STAGE_ORDER), f"stages to run, in order (a prefix of {', '.join(STAGE_ORDER)})")
    pretrain: dict = option({"config": "tiny"}, "pretrain's recipe and overrides")
    sft: dict = option({"config": "tiny"}, "SFT's recipe and overrides")
    reward: dict = option({"config": "tiny"}, "the reward model's recipe and overrides")
    dpo: dict = option({"config": "tiny"}, "DPO's recipe and overrides")
    ppo: dict = option({"config": "tiny"}, "PPO's recipe and overrides (its reward.model: the chain's reward model)")
    grpo: dict = option({"config": "tiny"}, "GRPO's recipe and overrides")

    def validate(self) -> None:
        if list(self.stages) != list(STAGE_ORDER[: len(self.stages)]) or not self.stages:
            raise UserInputError(f"chain.stages: {self.stages} must be a prefix of {', '.join(STAGE_ORDER)}")
        for stage in self.stages:
            spec = getattr(self, stage)
            unknown = set(spec) - {"config", "overrides"}
            if unknown or not isinstance(spec.get("overrides", {}), dict):
                raise UserInputError(f"chain.{stage}: takes 'config' and an 'overrides' mapping, got {spec}")


@dataclass
class RLHFConfig:
    run: ChainRunConfig = dataclasses.field(default_factory=ChainRunConfig)
    chain: ChainConfig = dataclasses.field(default_factory=ChainConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()


def parse_cli(argv: list[str] | None) -> RLHFConfig:
    return parse_tree(
        RLHFConfig, argv, "orchestrator.rlhf", SUMMARY, default_recipe="tiny", recipe_dir=RECIPE_DIR / "rlhf"
    )


def stage_argv(
    cfg: RLHFConfig, stage: str, run_name: str, start: str, tracking_uri: str, reward_model: str = ""
) -> list[str]:
    spec = getattr(cfg.chain, stage)
    overrides = spec.get("overrides", {})
    argv = [
        "--config",
        spec.get("config", "tiny"),
        f"--run.name={run_name}",
        f"--run.output_dir={cfg.run.output_dir}",
        f"--tracking.uri={tracking_uri}",
        f"--tracking.experiment={cfg.tracking.experiment}",
    ]
    if stage == "ppo" and reward_model and not {"reward.model", "reward.function"} & set(overrides):
        argv.append(f"--reward.model={reward_model}")
    argv += [f"--{key}={value}" for key, value in overrides.items()]
    if start:
        argv.append(f"--model.init_from={start}")
    return argv


def stage_key(cfg: RLHFConfig, stage: str, previous_key: str) -> str:
    """Hash of the stage's recipe and overrides and of the stages before it; cadence overrides
    (logging, evaluation, checkpoints, halting) change no result and are left out."""
    spec = getattr(cfg.chain, stage)
    overrides = {
        key: value
        for key, value in spec.get("overrides", {}).items()
        if not (key.startswith("train.") and key.removeprefix("train.") in CADENCE_FIELDS)
    }
    text = json.dumps(
        {"stage": stage, "config": spec.get("config", "tiny"), "overrides": overrides, "previous": previous_key},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def open_parent_run(cfg: RLHFConfig, uri: str, record: dict[str, Any]) -> str:
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


def run_chain(cfg: RLHFConfig) -> dict[str, dict[str, Any]]:
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
        start = outcome[STARTS_FROM[stage]]["checkpoint"] if stage in STARTS_FROM else ""
        reward_model = outcome["reward"]["checkpoint"] if "reward" in outcome else ""
        argv = stage_argv(cfg, stage, run_name, start, uri, reward_model)
        print(f"rlhf: {stage}: running {run_name}")
        if stage == "pretrain":
            stage_cfg = parse_pretrain(argv)
            final = pretrain(stage_cfg, tags={"mlflow.parentRunId": parent})
        elif stage in RL_STAGES:
            stage_cfg = parse_rl_cli(stage, argv)
            final = run_rl(stage_cfg, parent_run_id=parent)
        else:
            stage_cfg = parse_stage_cli(stage, argv)
            final = run_stage(stage, stage_cfg, parent_run_id=parent)
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
