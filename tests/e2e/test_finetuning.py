"""SFT, the reward model and DPO, each a real Ray Train + DeepSpeed job from the one shared tiny checkpoint.

The built-in task shows each stage works: SFT lowers the held-out response loss, the
reward model ranks held-out pairs, and DPO raises the rate of the preferred property
(responses written as comments) on held-out prompts over the SFT model's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.stages.sft import SFT
from tests.helpers import shared_env, stage_args, step_metrics, train_stage
from workloads.errors import UserInputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(alignment_home):
    return alignment_home


def train(stage: str, workspace, start, *overrides: str) -> dict:
    return train_stage(stage, workspace, start, *overrides)


@pytest.fixture(scope="module")
def sft(tiny_sft):
    return tiny_sft


def test_sft_lowers_the_held_out_response_loss_of_the_pretrained_model(sft, workspace):
    evals = step_metrics(workspace["root"] / "runs" / "sft-tiny", "eval/loss")
    assert evals[0] > sft["eval/loss"] == evals[sft["step"]]
    print(
        f"SFT held-out response loss: pretrained {evals[0]:.4f} -> {evals[sft['step']]:.4f}; "
        f"property rate after SFT {sft['task/property_rate']:.3f}"
    )


def test_the_reward_model_ranks_held_out_pairs(tiny_reward_model, workspace):
    reward = tiny_reward_model
    print(
        f"reward model: held-out pairwise accuracy {reward['eval/accuracy']:.3f}, margin {reward['eval/margin']:.3f}; "
        f"built-in held-out prompts {reward['task/heldout_accuracy']:.3f}"
    )
    assert reward["eval/accuracy"] >= 0.8 and reward["task/heldout_accuracy"] >= 0.8

    pairs = workspace["root"] / "runs" / "datasets" / "builtin-task" / "heldout.jsonl"
    records = [json.loads(line) for line in pairs.read_text().splitlines()][:20]
    scored = workspace["root"] / "score.jsonl"
    scored.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "response": r[side]}) + "\n"
            for r in records
            for side in ("chosen", "rejected")
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.score_rewards", reward["checkpoint"], str(scored)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rewards = [json.loads(line)["reward"] for line in done.stdout.splitlines()]
    assert len(rewards) == 40
    assert sum(rewards[i] > rewards[i + 1] for i in range(0, 40, 2)) >= 16


def test_dpo_raises_the_property_rate_over_the_sft_model_and_records_its_lineage(sft, workspace):
    dpo = train("dpo", workspace, sft["checkpoint"])
    print(
        f"DPO: property rate {sft['task/property_rate']:.3f} (SFT) -> {dpo['task/property_rate']:.3f}; "
        f"held-out preference accuracy {dpo['eval/accuracy']:.3f}"
    )
    assert dpo["task/property_rate"] >= sft["task/property_rate"] + 0.20

    client = MlflowClient(workspace["uri"])
    run = client.get_run(dpo["mlflow_run_id"])
    assert run.data.tags["orchestrator.parent_checkpoint"] == sft["checkpoint"]
    assert run.data.tags["orchestrator.parent_run_id"] == sft["mlflow_run_id"]
    assert run.data.tags["orchestrator.tokenizer_sha256"] and run.data.tags["orchestrator.dataset_hash"]
    assert run.data.metrics["task/property_rate"] == pytest.approx(dpo["task/property_rate"])
    artifacts = {a.path for a in client.list_artifacts(dpo["mlflow_run_id"])}
    assert {"generations.json", "config.yaml"} <= artifacts


@pytest.mark.parametrize(
    "record, message",
    [
        ('{"prompt": "p", "chosen": "a"}', ":1: missing field 'rejected'"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}', ":1: ranking [0, 0] is not an order"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"', ":1: not valid JSON"),
    ],
)
def test_bad_preference_records_stop_the_stage_before_anything_is_written(workspace, tmp_path, record, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text(record + "\n")
    with pytest.raises(UserInputError, match=f"^{path}{message}".replace("[", r"\[").replace("]", r"\]")):
        train("reward", workspace, workspace["pretrained"], f"--data.train_file={path}", "--run.name=bad")
    assert not (workspace["root"] / "runs" / "bad").exists()


def test_a_shape_field_that_disagrees_with_the_checkpoint_is_refused(workspace):
    with pytest.raises(UserInputError, match=r"model.d_model=128 disagrees with the starting checkpoint's 64"):
        SFT.parse(stage_args(workspace, f"--model.init_from={workspace['pretrained']}", "--model.d_model=128"))
    assert (
        SFT.parse(
            stage_args(workspace, f"--model.init_from={workspace['pretrained']}", "--model.d_model=64")
        ).model.d_model
        == 64
    )


def test_a_stage_as_a_user_runs_it_refuses_a_dataset_of_another_tokenizer(workspace, sft, tmp_path):
    """A prepared dataset given as data.train_file must be tokenized with the starting checkpoint's tokenizer."""
    from workloads.stages.datasets import MANIFEST_FILE

    prepared = next((workspace["root"] / "runs" / "datasets").glob("sft-*"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for file in prepared.iterdir():
        (foreign / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((foreign / MANIFEST_FILE).read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (foreign / MANIFEST_FILE).write_text(json.dumps(manifest))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.sft",
            *stage_args(workspace, "--run.name=foreign"),
            f"--model.init_from={workspace['pretrained']}",
            f"--data.train_file={foreign}",
        ],
        env=shared_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {foreign}: tokenized with another tokenizer (000000000000...) than the starting checkpoint's "
        f"({manifest_sha(prepared)[:12]}...)"
    )
    assert not (workspace["root"] / "runs" / "foreign").exists()


def manifest_sha(dataset) -> str:
    return json.loads((dataset / "manifest.json").read_text())["tokenizer"]["sha256"]


def test_an_mlflow_run_id_names_that_runs_final_checkpoint(workspace, tiny_run):
    run_id = json.loads((tiny_run["run_dir"] / "run.json").read_text())["mlflow_run_id"]
    cfg = SFT.parse(["--config", "tiny", f"--model.init_from={run_id}", f"--tracking.uri={tiny_run['tracking_uri']}"])
    assert cfg.model.init_from == f"checkpoint:{tiny_run['checkpoint'].resolve()}"
    with pytest.raises(UserInputError, match=f"model.init_from: MLflow run {'0' * 32} not found"):
        SFT.parse(["--config", "tiny", f"--model.init_from={'0' * 32}", f"--tracking.uri={tiny_run['tracking_uri']}"])
