"""`orchestrator.rlhf`: a chain of stages that skips what finished, resumes what was interrupted and
re-runs what changed (with every stage after it), each stage a nested MLflow child run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config.parser import RECIPE_DIR
from orchestrator.stages.chain import parse_cli, run_chain
from orchestrator.stages.registry import DRIVERS
from orchestrator.stages.sft import SFTDriver
from tests.helpers import step_metrics
from workloads.checkpoints.loading import read_description

pytestmark = pytest.mark.slow


def chain_args(tmp_path, tiny_dataset, sft_overrides: str) -> list[str]:
    return [
        "--config",
        "tiny",
        f"--run.output_dir={tmp_path / 'runs'}",
        f"--tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--chain.stages=[pretrain, sft, reward]",
        f"--chain.pretrain={{config: tiny, overrides: {{data.corpus: {tiny_dataset}, train.max_steps: 4, "
        "train.eval_interval: 4}}",
        "--chain.sft={config: tiny, overrides: {train.max_steps: 4, train.eval_interval: 2, "
        f"train.checkpoint_interval: 2{sft_overrides}}}}}",
        "--chain.reward={config: tiny, overrides: {train.max_steps: 3, train.eval_interval: 3}}",
    ]


def test_the_chain_skips_resumes_and_reruns(tiny_dataset, tmp_path, shared_ray):
    # 1. SFT is interrupted after step 2 (halting is not part of a stage's identity).
    first = run_chain(parse_cli(chain_args(tmp_path, tiny_dataset, ", train.halt_at_step: 2")))
    assert set(first) == {"pretrain"}
    record = json.loads((tmp_path / "runs" / "rlhf-tiny" / "chain.json").read_text())
    assert set(record["stages"]) == {"pretrain"}

    # 2. Run again: pretrain is skipped, SFT resumes from its step-2 checkpoint, the reward model runs.
    second = run_chain(parse_cli(chain_args(tmp_path, tiny_dataset, "")))
    assert [second[s]["skipped"] for s in ("pretrain", "sft", "reward")] == [True, False, False]
    assert second["pretrain"]["checkpoint"] == first["pretrain"]["checkpoint"]
    sft_dir = tmp_path / "runs" / second["sft"]["run_name"]
    assert sorted(step_metrics(sft_dir)) == [1, 2, 3, 4]
    assert sorted(step_metrics(sft_dir, "eval/loss")) == [0, 2, 4]  # step 0 is the starting model's baseline
    resumes = [
        json.loads(line)
        for line in (sft_dir / "samples" / "rank-00000.jsonl").read_text().splitlines()
        if "resumed_from" in line
    ]
    assert [entry["resumed_from"] for entry in resumes] == [0, 2]

    # 3. Nothing changed: nothing runs.
    third = run_chain(parse_cli(chain_args(tmp_path, tiny_dataset, "")))
    assert all(result["skipped"] for result in third.values())
    assert {s: r["checkpoint"] for s, r in third.items()} == {s: r["checkpoint"] for s, r in second.items()}

    # 4. SFT's config changes: SFT and every stage after it run again, under new names; pretrain does not.
    fourth = run_chain(parse_cli(chain_args(tmp_path, tiny_dataset, ", train.lr: 5.0e-4")))
    assert [fourth[s]["skipped"] for s in ("pretrain", "sft", "reward")] == [True, False, False]
    for stage in ("sft", "reward"):
        assert fourth[stage]["run_name"] != second[stage]["run_name"]
        assert (tmp_path / "runs" / second[stage]["run_name"]).exists()  # the earlier outputs are kept

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = json.loads((tmp_path / "runs" / "rlhf-tiny" / "chain.json").read_text())["parent_run_id"]
    for stage in ("pretrain", "sft", "reward"):
        child = client.get_run(fourth[stage]["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent, stage


def test_ppo_in_the_chain_scores_with_the_chains_reward_model_unless_told_otherwise(tmp_path):
    from orchestrator.stages.chain import stage_overrides

    cfg = parse_cli(["--config", "tiny", f"--run.output_dir={tmp_path}"])
    assert cfg.chain.stages == ["pretrain", "sft", "reward", "dpo", "ppo", "grpo"]
    finished = {"sft": {"checkpoint": "SFT-CHECKPOINT"}, "reward": {"checkpoint": "RM-CHECKPOINT"}}
    overrides = stage_overrides(cfg, "ppo", "ppo-1", finished, "sqlite:///x.db")
    assert overrides["reward.model"] == "RM-CHECKPOINT" and list(overrides)[-1] == "model.init_from"
    assert overrides["model.init_from"] == "SFT-CHECKPOINT"
    cfg.chain.ppo = {"config": "tiny", "overrides": {"reward.function": "workloads.task:property_reward"}}
    overrides = stage_overrides(cfg, "ppo", "ppo-1", finished, "sqlite:///x.db")
    assert "reward.model" not in overrides
    assert overrides["reward.function"] == "workloads.task:property_reward"
    grpo = stage_overrides(cfg, "grpo", "grpo-1", finished, "sqlite:///x.db")
    assert not any(key.startswith("reward.") for key in grpo)  # its recipe's rule reward


class EchoDriver(SFTDriver):
    """A stage the registry does not ship, added by this test: SFT's workers and recipes under a name of its own."""

    name = "echo"
    summary = "SFT once more, as a stage of its own."
    worker_stage = "sft"
    starts_from = "pretrain"

    @property
    def recipe_dir(self) -> Path:
        return RECIPE_DIR / "sft"


def test_a_stage_added_to_the_registry_runs_in_a_chain(tiny_dataset, tmp_path, shared_ray):
    drivers = {**DRIVERS, "echo": EchoDriver()}  # the new stage's one registry line
    argv = [
        "--config",
        "tiny",
        f"--run.output_dir={tmp_path / 'runs'}",
        f"--tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--chain.stages=[pretrain, echo]",
        f"--chain.pretrain={{config: tiny, overrides: {{data.corpus: {tiny_dataset}, train.max_steps: 2, "
        "train.eval_interval: 2}}",
        "--chain.echo={config: tiny, overrides: {train.max_steps: 2, train.eval_interval: 2, samples.prompts: 4}}",
    ]
    first = run_chain(parse_cli(argv, drivers))
    assert [first[s]["skipped"] for s in ("pretrain", "echo")] == [False, False]
    assert first["echo"]["run_name"].startswith("echo-")
    echo_dir = tmp_path / "runs" / first["echo"]["run_name"]
    assert sorted(step_metrics(echo_dir)) == [1, 2]
    assert read_description(Path(first["echo"]["checkpoint"]))["model"]["init_from"] == (
        f"checkpoint:{Path(first['pretrain']['checkpoint']).resolve()}"
    )
    second = run_chain(parse_cli(argv, drivers))
    assert all(result["skipped"] for result in second.values())
