"""The reward scorer (a Ray actor): a trained reward model, or a function imported by its path.

Rewards are computed from text, as a user's function sees them: the prompt and the decoded
response. A reward model scores `[eos] + prompt + response + [eos]`, the form its
preference pairs had in training (`workloads.stages.datasets.sequence`).

Whatever comes back is checked (`reward_problem`): one finite number per response. Before
any rollout the driver asks the scorer for a trial call on two dummy responses; during the
run a bad batch is reported, not raised, so that the learner can skip it and count it.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch

from workloads.checkpoints.loading import load_checkpoint
from workloads.errors import UserInputError
from workloads.rl.config import RewardConfig
from workloads.stages.datasets import sequence

TRIAL_PROMPTS = ["### User:\nx = 1\n### Assistant:\n"] * 2
TRIAL_RESPONSES = ["# a comment", "y = 2"]
BATCH_SIZE = 32  # sequences per reward-model forward pass


def import_reward_function(path: str):
    """The callable that `package.module:function` names; one line saying why not otherwise."""
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - whatever the import raises, the path does not resolve
        raise UserInputError(
            f"reward.function: {path!r} does not resolve ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserInputError(
            f"reward.function: {path!r} does not resolve (module {module_name!r} has no function {name!r})"
        )
    return function


def reward_problem(values: Any, expected: int) -> str:
    """'' when `values` are `expected` finite numbers, else what is wrong with them (a phrase)."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return f"returned {type(values).__name__} values that are not all numbers"
    if len(numbers) != expected:
        return f"returned {len(numbers)} values for {expected} responses"
    bad = [i for i, v in enumerate(numbers) if not math.isfinite(v)]
    if bad:
        return f"returned a non-finite value ({numbers[bad[0]]}) for response {bad[0]}"
    return ""


class RewardScorer:
    """Scores (prompt, response) texts. Loads its reward on first use, so that starting never fails."""

    def __init__(self, reward: dict[str, Any]):
        torch.set_num_threads(1)
        self.config = RewardConfig(**reward)
        self._function = None
        self._model = None

    def problem(self) -> str:
        """'' when the reward can be used, else one line naming the reward and what is wrong."""
        try:
            self._load()
        except UserInputError as e:
            return str(e)
        result = self.score(TRIAL_PROMPTS, TRIAL_RESPONSES)
        if result["problem"]:
            return f"{self.config.source}: a trial call on {len(TRIAL_RESPONSES)} responses {result['problem']}"
        return ""

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, Any]:
        """{"rewards": one float per response, or None; "problem": '' or what went wrong}."""
        self._load()
        try:
            values = (
                self._function(list(prompts), list(responses))
                if self._function
                else self._score_model(prompts, responses)
            )
        except Exception as e:  # noqa: BLE001 - a reward that raises is a bad batch, reported like the others
            return {
                "rewards": None,
                "problem": f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            }
        problem = reward_problem(values, len(responses))
        return {"rewards": None if problem else [float(v) for v in values], "problem": problem}

    def _load(self) -> None:
        if self._function is not None or self._model is not None:
            return
        if self.config.function:
            self._function = import_reward_function(self.config.function)
        else:
            self._model = load_checkpoint(self.config.model)

    @torch.no_grad()
    def _score_model(self, prompts: list[str], responses: list[str]) -> list[float]:
        tokenizer, context = self._model.tokenizer, self._model.config.max_seq_len
        rewards: list[float] = []
        for start in range(0, len(prompts), BATCH_SIZE):
            ids = [
                sequence(tokenizer.eos_id, tokenizer.encode(p), tokenizer.encode(r))[-context:]
                for p, r in zip(prompts[start : start + BATCH_SIZE], responses[start : start + BATCH_SIZE])
            ]
            batch = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)  # right-padded: (B, T)
            for row, seq in enumerate(ids):
                batch[row, : len(seq)] = torch.tensor(seq)
            last = torch.tensor([len(seq) - 1 for seq in ids])  # (B,): the reward is read at each row's last token
            rewards += self._model.model(batch, last).tolist()
        return rewards
