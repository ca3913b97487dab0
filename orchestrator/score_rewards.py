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

from orchestrator.config.parser import run_cli
from orchestrator.data.records import read_sft
from orchestrator.model_tools.reward_scores import score


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
