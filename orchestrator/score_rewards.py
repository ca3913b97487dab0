"""`python -m orchestrator.score_rewards CHECKPOINT FILE.jsonl`: a trained reward model's score for each response.

FILE holds one record per line, `{"prompt", "response"}` or `{"messages": [...]}` (the
chat template's last assistant message is the response), as SFT data does. Prints each
record back as a JSON line with a `reward` field added.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from orchestrator.config import run_cli
from orchestrator.stage_data import read_sft
from workloads.checkpoint_loading import SCALAR_HEAD, load_checkpoint
from workloads.errors import UserInputError
from workloads.stages.datasets import sequence


@torch.no_grad()
def score(checkpoint: str | Path, pairs: list[tuple[str, str]], batch_size: int = 16, device: str = "cpu") -> list[float]:
    """Rewards of (prompt, response) pairs; a sequence longer than the context keeps its last tokens."""
    loaded = load_checkpoint(checkpoint, device)
    if loaded.description.get("kind") != SCALAR_HEAD:
        raise UserInputError(f"{loaded.checkpoint}: not a reward model (trained by orchestrator.reward)")
    tokenizer, context = loaded.tokenizer, loaded.config.max_seq_len
    rewards: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ids = [sequence(tokenizer.eos_id, tokenizer.encode(p), tokenizer.encode(r))[-context:] for p, r in chunk]
        batch = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for row, seq in enumerate(ids):
            batch[row, : len(seq)] = torch.tensor(seq)
        last = torch.tensor([len(seq) - 1 for seq in ids])
        rewards += loaded.model(batch.to(device), last.to(device)).tolist()
    return rewards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.score_rewards", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a reward-model checkpoint or run directory")
    parser.add_argument("records", type=Path, help="JSONL of prompt/response records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    records = read_sft(args.records)
    rewards = score(args.checkpoint, [(r.prompt, r.responses[0]) for r in records], device=args.device)
    for record, reward in zip(records, rewards):
        print(json.dumps({"prompt": record.prompt, "response": record.responses[0], "reward": reward}))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
