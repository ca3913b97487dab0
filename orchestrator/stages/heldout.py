"""After training, on the driver: held-out prompts sampled with the KV-cache generator (or, for a
reward model, held-out pairs scored), logged to MLflow as a table; on the built-in task the
property's rate among the responses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from orchestrator.config.sections import dataset_root
from orchestrator.data.finetuning import BUILTIN, builtin_files
from orchestrator.model_tools.reward_scores import score
from workloads.checkpoints.loading import load_checkpoint
from workloads.errors import UserInputError
from workloads.generation import Sampling, generate
from workloads.schema import option
from workloads.task import has_property


@dataclass
class SampleConfig:
    """Generations on held-out prompts after training, logged to MLflow as a table (and the built-in task's
    property rate)."""

    prompts: int = option(200, "held-out prompts to sample (the reward model scores as many held-out pairs)")
    max_new_tokens: int = option(24, "new tokens per prompt (capped to the context)")
    # 1.0 samples the model's own distribution: a lower temperature would sharpen it and move the
    # property's measured rate towards 0 or 1 whatever the training did.
    temperature: float = option(1.0, "sampling temperature; 0 = greedy")
    top_k: int = option(0, "keep the k most likely tokens; 0 = off")
    seed: int = option(0, "sampling seed")

    def validate(self) -> None:
        if self.prompts < 0 or self.max_new_tokens < 1 or self.temperature < 0:
            raise UserInputError("samples: prompts >= 0, max_new_tokens >= 1 and temperature >= 0 are required")


def heldout_records(cfg) -> list[dict[str, str]]:
    """Held-out prompts (with their chosen and rejected responses where known), at most `samples.prompts`."""
    if cfg.data.train_file == BUILTIN:
        path = builtin_files(dataset_root(cfg.run.output_dir, cfg.data.dataset_dir))["heldout"]
    elif cfg.data.val_file:
        path = Path(cfg.data.val_file)
    else:
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if isinstance(row.get("prompt"), str)][: cfg.samples.prompts]


def log_samples(stage: str, cfg, checkpoint: str, recorder) -> dict[str, float]:
    """Sample (or score) held-out prompts with the final weights; log a table; return task metrics."""
    records = heldout_records(cfg)
    if not records:
        return {}
    if stage == "reward":
        table, metrics = score_heldout_pairs(checkpoint, records)
    else:
        responses = sample_responses(checkpoint, [r["prompt"] for r in records], cfg.samples)
        table = {"prompt": [r["prompt"] for r in records], "response": responses}
        metrics = {}
        if cfg.data.train_file == BUILTIN:
            table["has_property"] = [has_property(r) for r in responses]
            metrics["task/property_rate"] = sum(table["has_property"]) / len(responses)
            print(
                f"{stage}: built-in task: {100 * metrics['task/property_rate']:.1f}% of {len(responses)} held-out "
                "responses have the property (written as a comment)"
            )
    if recorder.run_id:
        recorder.client.log_table(recorder.run_id, data=table, artifact_file="generations.json")
    return metrics


def sample_responses(checkpoint: str, prompts: list[str], samples: SampleConfig) -> list[str]:
    """The KV-cache generator's responses to `prompts` (fixed seed), each prompt opening a document."""
    loaded = load_checkpoint(checkpoint)
    _, out = sample_prompts(loaded, prompts, samples)
    return [loaded.tokenizer.decode(ids) for ids in out.tokens]


def sample_prompts(loaded, prompts: list[str], samples: SampleConfig):
    """(encoded prompts, `Generated`) of a loaded checkpoint answering `prompts` with the sample settings:
    each prompt opens a document and is cut from the left to leave the context room; fixed seed."""

    tokenizer = loaded.tokenizer
    encoded = [[tokenizer.eos_id, *tokenizer.encode(p)][-(loaded.config.max_seq_len - 1) :] for p in prompts]
    room = loaded.config.max_seq_len - max(map(len, encoded))
    out = generate(
        loaded.model,
        encoded,
        min(samples.max_new_tokens, room),
        Sampling(samples.temperature, samples.top_k),
        eos_id=tokenizer.eos_id,
        generator=torch.Generator().manual_seed(samples.seed),
    )
    return encoded, out


def score_heldout_pairs(checkpoint: str, records: list[dict[str, str]]) -> tuple[dict[str, list], dict[str, float]]:
    pairs = [r for r in records if isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)]
    chosen = score(checkpoint, [(r["prompt"], r["chosen"]) for r in pairs])
    rejected = score(checkpoint, [(r["prompt"], r["rejected"]) for r in pairs])
    table = {
        "prompt": [r["prompt"] for r in pairs],
        "chosen": [r["chosen"] for r in pairs],
        "rejected": [r["rejected"] for r in pairs],
        "reward_chosen": chosen,
        "reward_rejected": rejected,
    }
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / max(len(pairs), 1)
    print(f"reward: held-out prompts: the chosen response scores higher in {100 * accuracy:.1f}% of {len(pairs)} pairs")
    return table, {"task/heldout_accuracy": accuracy}
