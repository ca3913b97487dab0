"""A trained reward model's score for (prompt, response) pairs.

The command is `python -m orchestrator.score_rewards`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.checkpoints.loading import SCALAR_HEAD, load_checkpoint
from workloads.errors import UserInputError
from workloads.stages.datasets import sequence


@torch.no_grad()
def score(
    checkpoint: str | Path, pairs: list[tuple[str, str]], batch_size: int = 16, device: str = "cpu"
) -> list[float]:
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
