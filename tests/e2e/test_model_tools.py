"""Using a trained checkpoint as a user does: `orchestrator.generate` and `orchestrator.evaluate`.

Every test starts from the one shared tiny checkpoint (`tiny_run` in conftest) and
runs the commands as subprocesses, as a user types them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from workloads.checkpoints.loading import load_checkpoint
from workloads.generation import Sampling, generate

pytestmark = pytest.mark.slow


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"orchestrator.{module}", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_generate_prints_greedy_text_equal_to_the_library_call_and_its_speed(tiny_checkpoint):
    done = run(
        "generate", tiny_checkpoint, "--prompt", "def ", "--temperature", "0", "--max-new-tokens", "20", "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    loaded = load_checkpoint(tiny_checkpoint)
    tokenizer = loaded.tokenizer
    expected = generate(
        loaded.model,
        [[tokenizer.eos_id, *tokenizer.encode("def ")]],
        20,
        Sampling(temperature=0),
        eos_id=tokenizer.eos_id,
    )
    completion = result["completions"][0]
    assert completion["completion"] == tokenizer.decode(expected.tokens[0])
    assert completion["new_tokens"] == len(expected.tokens[0]) > 0
    assert result["tokens_per_s"] > 0

    text = run("generate", tiny_checkpoint, "--prompt", "def ", "--temperature", "0", "--max-new-tokens", "20")
    assert text.returncode == 0 and "tok/s, KV cache" in text.stdout
    assert "def " + completion["completion"] in text.stdout


def test_generate_caps_new_tokens_to_the_context_and_refuses_or_cuts_long_prompts(tiny_checkpoint, tmp_path):
    context = load_checkpoint(tiny_checkpoint).config.max_seq_len  # 64 in the tiny recipe
    capped = run("generate", tiny_checkpoint, "--prompt", "x", "--max-new-tokens", "500", "--seed", "3")
    assert capped.returncode == 0, capped.stderr
    assert f"--max-new-tokens capped at {context - 2}" in capped.stderr  # end-of-document + 'x' take 2

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "import os\n" * 60}) + "\n" + json.dumps({"prompt": "class "}) + "\n")
    refused = run("generate", tiny_checkpoint, "--prompts", prompts)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: prompt 1:") and f"context of {context} tokens" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    cut = run("generate", tiny_checkpoint, "--prompts", prompts, "--truncate-prompts", "--max-new-tokens", "8")
    assert cut.returncode == 0, cut.stderr
    assert f"prompt 1 cut to its last {context - 8} of" in cut.stderr
    assert "=== 2 ===\nclass " in cut.stdout


def test_evaluate_dataset_repeats_trainings_evaluation_and_records_a_run_of_its_own(tiny_run, tiny_dataset):
    done = run(
        "evaluate",
        tiny_run["checkpoint"],
        "--dataset",
        tiny_dataset,
        "--json",
        "--tracking-uri",
        tiny_run["tracking_uri"],
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (scored,) = result["results"].values()
    assert scored["loss"] == pytest.approx(tiny_run["final"]["eval/loss"], rel=1e-6)
    assert scored["bpb"] == pytest.approx(tiny_run["final"]["eval/bpb"], rel=1e-6)

    client = MlflowClient(tiny_run["tracking_uri"])
    recorded = client.get_run(result["mlflow_run_id"])
    training_run_id = json.loads((tiny_run["run_dir"] / "run.json").read_text())["mlflow_run_id"]
    assert recorded.data.tags["orchestrator.parent_run_id"] == training_run_id
    assert recorded.data.tags["orchestrator.stage"] == "evaluate"
    assert recorded.data.metrics["eval/loss"] == pytest.approx(scored["loss"])


def test_evaluate_scores_every_token_of_any_text_once(tiny_checkpoint, small_corpus, tmp_path):
    files = sorted(small_corpus.glob("*.txt"))[:2]
    done = run("evaluate", tiny_checkpoint, "--text", files[0], "--text", files[1], "--json", "--no-tracking")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    tokenizer = load_checkpoint(tiny_checkpoint).tokenizer
    for path in files:
        text = path.read_text(encoding="utf-8")
        scored = results[str(path)]
        assert scored["tokens"] == len(tokenizer.encode(text)) + 1  # every token and the end of the document
        assert scored["bytes"] == len(text.encode("utf-8"))
    assert results["all"]["tokens"] == sum(results[str(p)]["tokens"] for p in files)
    assert 0 < results["all"]["bpb"] < 8

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9".encode("latin-1"))
    bad = run("evaluate", tiny_checkpoint, "--text", latin1, "--no-tracking")
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {latin1}: not UTF-8 text (byte 3)"


def test_a_path_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    done = run("generate", tmp_path, "--prompt", "x")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {tmp_path}: not a checkpoint (no training_state.json) nor a run directory "
        "(no train/checkpoint_manager_snapshot.json)"
    )
