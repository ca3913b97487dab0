"""PPO and GRPO as real runs: rollout actors, a reward actor and a DeepSpeed learner on a local Ray,
from one shared tiny SFT checkpoint (and a reward model trained from it), on the built-in task.

GRPO with the task's rule reward closes at least half the gap between the SFT model's held-out
reward and the maximum, with the KL to the reference under its target; PPO with the trained
reward model raises the property's held-out rate by 20 points. A rollout actor killed mid-run is
replaced and the run resumes and finishes; bad rewards and bad configs stop with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.stages.registry import DRIVERS
from orchestrator.stages.rl import ROLLOUT_ACTOR_NAME
from tests.helpers import BAD_REWARDS, join_shared_ray, shared_env, stage_args, step_metrics
from workloads.errors import UserInputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(alignment_home):
    return alignment_home


@pytest.fixture(scope="module")
def sft(tiny_sft):
    return tiny_sft


@pytest.fixture(scope="module")
def reward_model(tiny_reward_model):
    return tiny_reward_model


def rl_args(workspace, sft, *overrides: str) -> list[str]:
    return stage_args(workspace, f"--model.init_from={sft['checkpoint']}", *overrides)


def run(algorithm: str, workspace, sft, *overrides: str):
    """(config, final metrics) of a real run."""
    join_shared_ray()
    cfg = DRIVERS[algorithm].parse(rl_args(workspace, sft, *overrides))
    return cfg, DRIVERS[algorithm].run(cfg)


def curve(run_dir, key: str) -> list[float]:
    values = step_metrics(run_dir, key)
    return [round(values[i], 4) for i in sorted(values)]


def test_grpo_closes_half_the_gap_to_the_maximum_within_the_kl_target_through_a_lost_actor_and_a_resume(workspace, sft):
    """GRPO with the rule reward from code (workloads.task:property_reward), run as it would be interrupted:
    rollout actor 0 is SIGKILLed during iteration 2 or so (its share is retried on a replacement), the
    first submission halts at iteration 15 with a checkpoint, and resubmitting the run's name finishes it."""
    import ray

    outcome: dict = {}

    def first_submission():
        try:
            outcome["first"] = run("grpo", workspace, sft, "--train.halt_at_step=15")
        except BaseException as e:  # noqa: BLE001 - re-raised below
            outcome["error"] = e

    run_dir = workspace["runs"] / "grpo-tiny"
    thread = threading.Thread(target=first_submission)
    thread.start()
    deadline = time.monotonic() + 600
    while thread.is_alive() and not iterations_logged(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    if thread.is_alive():  # else it failed before its first iteration: its error is raised below
        victim = ray.get_actor(ROLLOUT_ACTOR_NAME.format(index=0))
        os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
    thread.join(timeout=600)
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["first"][1]["step"] == 15
    assert step_metrics(run_dir, "rl/rollout_restarts")[15] >= 1

    cfg, final = run("grpo", workspace, sft)
    assert final["step"] == cfg.train.max_steps == 30
    assert sorted(step_metrics(run_dir, "rl/reward_mean")) == list(range(1, 31))
    assert step_metrics(run_dir, "rl/rollout_restarts")[30] >= 1  # carried over by the checkpoint

    start = final["heldout/reward_mean_start"]  # the SFT model's, same prompts, sampler and seed
    assert start == pytest.approx(sft["task/property_rate"])  # the rule reward is the property
    print(
        f"GRPO held-out reward {start:.3f} (SFT) -> {final['heldout/reward_mean']:.3f}, held-out KL per token "
        f"{final['heldout/kl']:.4f} (target {cfg.kl.target}); training reward by iteration "
        f"{curve(run_dir, 'rl/reward_mean')}; KL per token {curve(run_dir, 'rl/kl')}"
    )
    assert final["heldout/reward_mean"] >= start + (1.0 - start) / 2
    assert final["heldout/kl"] < cfg.kl.target

    client = MlflowClient(workspace["uri"])
    recorded = client.get_run(final["mlflow_run_id"])
    assert recorded.info.run_id == outcome["first"][1]["mlflow_run_id"]  # the resubmission continued it
    assert recorded.data.tags["orchestrator.parent_checkpoint"] == sft["checkpoint"]
    assert recorded.data.tags["orchestrator.parent_run_id"] == sft["mlflow_run_id"]
    assert recorded.data.tags["orchestrator.reward"] == "reward.function=workloads.task:property_reward"
    assert recorded.data.metrics["heldout/kl"] == pytest.approx(final["heldout/kl"])
    assert recorded.data.metrics["rl/reward_mean"] == pytest.approx(step_metrics(run_dir, "rl/reward_mean")[30])
    artifacts = {a.path for a in client.list_artifacts(final["mlflow_run_id"])}
    assert {"generations.json", "rollouts.json", "config.yaml"} <= artifacts


def iterations_logged(run_dir) -> int:
    """Iterations in the run's metrics record so far (a line being written is not one yet)."""
    try:
        return len(step_metrics(run_dir, "rl/reward_mean"))
    except (OSError, ValueError):
        return 0


def test_ppo_with_the_reward_model_raises_the_property_rate_by_20_points(workspace, sft, reward_model):
    """Colocated: the learner generates with its own policy (no rollout actors)."""
    cfg, final = run("ppo", workspace, sft, f"--reward.model={reward_model['checkpoint']}", "--rl.mode=colocated")
    run_dir = cfg.run.run_dir()
    print(
        f"PPO property rate {sft['task/property_rate']:.3f} (SFT) -> {final['task/property_rate']:.3f}, held-out KL "
        f"per token {final['heldout/kl']:.4f} (target {cfg.kl.target}); held-out reward-model score "
        f"{final['heldout/reward_mean_start']:.3f} -> {final['heldout/reward_mean']:.3f}; training reward by iteration "
        f"{curve(run_dir, 'rl/reward_mean')}; KL per token {curve(run_dir, 'rl/kl')}; value loss "
        f"{curve(run_dir, 'rl/value_loss')}"
    )
    assert final["task/property_rate_start"] == pytest.approx(sft["task/property_rate"])
    assert final["task/property_rate"] >= sft["task/property_rate"] + 0.20
    assert final["heldout/kl"] < cfg.kl.target


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--grpo.group_size=1"], "grpo.group_size: 1 must be >= 2"),
        (["--deepspeed.zero_stage=3"], "deepspeed.zero_stage=3: ZeRO-3 is not supported for RL yet"),
        (["--reward.function="], "reward: set exactly one of reward.model"),
        (["--rl.minibatch_size=48"], "rl.minibatch_size=48 does not divide the rollout batch of 64 sequences"),
    ],
)
def test_bad_configs_are_refused_with_one_line(workspace, sft, overrides, message):
    with pytest.raises(UserInputError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        DRIVERS["grpo"].parse(rl_args(workspace, sft, *overrides))


def test_a_reward_model_with_another_tokenizer_is_refused(workspace, sft, reward_model, tmp_path):
    foreign = tmp_path / "foreign-reward"
    source = Path(reward_model["checkpoint"])
    foreign.mkdir()
    for item in source.iterdir():
        (foreign / item.name).symlink_to(item)
    description = json.loads((source / "model.json").read_text())
    description["tokenizer"]["sha256"] = "f" * 64
    (foreign / "model.json").unlink()
    (foreign / "model.json").write_text(json.dumps(description))
    policy_sha = json.loads((Path(sft["checkpoint"]) / "model.json").read_text())["tokenizer"]["sha256"]
    with pytest.raises(UserInputError) as refused:
        DRIVERS["ppo"].parse(rl_args(workspace, sft, f"--reward.model={foreign}"))
    assert str(refused.value) == (
        f"reward.model: {foreign.resolve()} uses another tokenizer (sha256 ffffffffffff...) than "
        f"the policy's model.init_from (sha256 {policy_sha[:12]}...)"
    )


def test_a_reward_function_that_does_not_resolve_stops_before_any_rollout(workspace, sft):
    with pytest.raises(UserInputError) as refused:
        run("grpo", workspace, sft, "--reward.function=no_such_module:score", "--run.name=unresolved")
    assert str(refused.value) == (
        "reward.function: 'no_such_module:score' does not resolve "
        "(ModuleNotFoundError: No module named 'no_such_module')"
    )
    assert not (workspace["runs"] / "unresolved").exists()


def test_a_reward_that_turns_nan_mid_run_skips_batches_then_stops_the_run_with_one_line(workspace, sft, tmp_path):
    """`python -m orchestrator.grpo` from the directory holding the user's reward module (the reward actor
    imports it from the job's working directory). After a good first batch the reward turns NaN: the
    batches are skipped (counted) and after reward.max_bad_batches in a row the run stops, exit status 2,
    its last checkpoint kept."""
    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.grpo",
            *rl_args(
                workspace,
                sft,
                "--run.name=turns-nan",
                "--reward.function=bad_rewards:nan_after_the_first_batch",
                "--reward.max_bad_batches=2",
                "--train.checkpoint_interval=1",
            ),
        ],
        cwd=tmp_path,
        env=shared_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: reward.function=bad_rewards:nan_after_the_first_batch: bad rewards for 2 batches "
        "in a row (last: returned a non-finite value (nan) for response 0); stopped at iteration 3; "
        "last checkpoint kept: "
    ), last
    run_dir = workspace["runs"] / "turns-nan"
    assert step_metrics(run_dir, "rl/skipped_batches") == {1: 0.0, 2: 1.0}
    kept = Path(last.rsplit(": ", 1)[1])
    assert json.loads((kept / "training_state.json").read_text())["step"] == 2  # iteration 2 skipped: 1's weights
