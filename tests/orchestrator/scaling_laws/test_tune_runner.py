"""Trials under Ray Tune: a crashed trial is recorded and the next one trains; the plan's order and dependencies."""

from __future__ import annotations

import json

import pytest

from orchestrator.config.parser import to_dict
from orchestrator.scaling_laws.grid import design
from orchestrator.scaling_laws.sweep import base_config, parse_cli
from orchestrator.scaling_laws.trial_records import CRASHED, DIVERGED, OK, read_record, write_record
from orchestrator.scaling_laws.tune_runner import SKIP, Plan, run_trials
from orchestrator.stages.pretrain import PRETRAIN


@pytest.mark.slow
def test_a_crashed_trial_is_recorded_and_the_next_one_trains(tiny_dataset, tmp_path, shared_ray):
    tree, _ = parse_cli(["--config", "tiny", "--sweep.schedule=cosine"])
    specs = {s.name: s for s in design(tree, base_config(tree), 300_000).specs[:2]}
    crashing, training = list(specs)

    def launch(spec, multiplier, origin):
        argv = [
            "--config",
            "tiny",
            f"--data.corpus={tiny_dataset}",
            f"--run.output_dir={tmp_path}",
            f"--run.name={spec.name}",
            f"--tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "--train.max_steps=4",
            "--train.eval_interval=2",
        ]
        if spec.name == crashing:
            argv.append(f"--run.branch_from={tmp_path / 'no-such-checkpoint'}")
        return {
            "name": spec.name,
            "pretrain": to_dict(PRETRAIN.parse(argv)),
            "run_dir": str(tmp_path / spec.name),
            "tags": {},
            "record": spec.describe(),
            "tokens_per_step": 512,
            "cpus": 1,
            "origin_run_dir": "",
            "branch_step": 0,
        }

    seen = []
    plan = Plan(specs, tmp_path, launch, lambda name, record: seen.append((name, record["status"])))
    run_trials(plan, [crashing, training], 1, tmp_path / "tune", "test")
    crashed = read_record(tmp_path / crashing)
    assert crashed["status"] == CRASHED
    assert (
        crashed["reason"] == f"UserInputError: {tmp_path / 'no-such-checkpoint'}: no such checkpoint or run directory"
    )
    trained = read_record(tmp_path / training)
    assert trained["status"] == OK and trained["loss"] > 0 and len(trained["curve"]) == 2
    assert sorted(seen) == sorted([(crashing, CRASHED), (training, OK)])


def test_plan_starts_a_size_after_its_search_and_takes_the_best_search_trial_over(tmp_path):
    tree, _ = parse_cli(["--config", "tiny", "--sweep.tune_lr=true", "--sweep.lr_multipliers=[0.5, 2]"])
    specs = {s.name: s for s in design(tree, base_config(tree), 300_000).specs}
    launched = {}

    def launch(spec, multiplier, origin):
        launched[spec.name] = (multiplier, origin)
        return {"name": spec.name}

    plan = Plan(specs, tmp_path, launch, lambda name, record: None)
    longer = next(s for s in specs.values() if s.lr_search and not s.reuse_search)
    smallest = next(s for s in specs.values() if s.size == longer.size and s.reuse_search)
    assert plan.decide(longer.name) is None  # its size's search has not finished
    for name in longer.lr_search:  # an earlier invocation's crashed search, being trained again now
        write_record(tmp_path / name, {**specs[name].describe(), "status": CRASHED, "loss": None})
    plan.pending = set(longer.lr_search)
    assert plan.decide(longer.name) is None
    for name, loss in zip(longer.lr_search, (3.9, 3.7)):
        write_record(tmp_path / name, {**specs[name].describe(), "status": OK, "loss": loss, "lr": 1e-3, "curve": []})
        plan.completed(name, error=False)
    assert plan.decide(longer.name) == {"name": longer.name} and launched[longer.name] == (2.0, None)
    assert plan.decide(smallest.name) == SKIP  # the search trial at 2x is this very run: taken over, not trained
    taken = read_record(tmp_path / smallest.name)
    assert (taken["taken_from"], taken["loss"], taken["name"], taken["kind"]) == (
        longer.lr_search[1],
        3.7,
        smallest.name,
        "grid",
    )


def test_plan_starts_a_branch_once_its_checkpoint_is_registered(tmp_path):
    tree, _ = parse_cli(["--config", "tiny"])
    specs = {s.name: s for s in design(tree, base_config(tree), 300_000).specs}
    plan = Plan(
        specs,
        tmp_path,
        lambda spec, multiplier, origin: {"name": spec.name, "origin": origin},
        lambda name, record: None,
    )
    branch = next(s for s in specs.values() if s.branch_of)
    assert plan.decide(branch.name) is None  # the main run has not registered the checkpoint yet
    storage = tmp_path / branch.branch_of / "train"
    storage.mkdir(parents=True)
    snapshot = {
        "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a", "metrics": {"step": branch.branch_step}}]
    }
    (storage / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert plan.decide(branch.name) == {"name": branch.name, "origin": storage / "checkpoint_a"}


def test_plan_fails_a_branch_whose_main_run_ended_without_its_checkpoint(tmp_path):
    tree, _ = parse_cli(["--config", "tiny"])
    specs = {s.name: s for s in design(tree, base_config(tree), 300_000).specs}
    branch = next(s for s in specs.values() if s.branch_of)
    plan = Plan(specs, tmp_path, lambda *a: pytest.fail("nothing may start"), lambda name, record: None)
    write_record(tmp_path / branch.branch_of, {**specs[branch.branch_of].describe(), "status": DIVERGED, "loss": None})
    assert plan.decide(branch.name) == SKIP
    record = read_record(tmp_path / branch.name)
    assert record["status"] == "failed" and record["reason"] == (
        f"not run: {branch.branch_of} ended (diverged) without a checkpoint at step {branch.branch_step} to branch from"
    )
