"""Rank 0's side of an iteration: the policy's weights out to the rollout workers, rollouts and rewards in.

The Ray actors are created by the driver before the fit and reach rank 0 as handles in the
worker's config (`actors`), with the specs to start replacements from.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch

from workloads.rl.rollout import ActorRole


def rollout_seed(seed: int, *where: int) -> int:
    """A sampling seed for one share of one iteration, independent of which process samples it."""
    return int(np.random.SeedSequence([seed, *where]).generate_state(1)[0])


def push_weights(rollout: ActorRole, policy: torch.nn.Module, version: int) -> list:
    """Put the policy's state dict in the object store once and have every rollout worker load it;
    returns [its ObjectRef] (what a replacement worker loads from)."""
    # Under ZeRO 0-2 every rank holds whole parameters: rank 0's module is the policy. Under ZeRO 1-2 they
    # are views into DeepSpeed's flat buffer, and pickling a view serialises its whole storage: each goes
    # as a copy of its own. named_parameters() names a tied weight once (the worker re-ties the head).
    state = {name: param.detach().to("cpu", copy=True) for name, param in policy.named_parameters()}
    weights = [ray.put(state)]
    rollout.call("load_weights", [(weights, version)] * len(rollout.handles))
    return weights


class Controller:
    def __init__(self, actors: dict[str, Any], seed: int):
        self.scorer = ActorRole("reward scorer", actors["scorer_spec"], [actors["scorer"]])
        self.rollout = (
            ActorRole("rollout", actors["rollout_spec"], actors["rollout"]) if actors.get("rollout") else None
        )
        self.seed = seed
        self.weights: list = []  # [ObjectRef of the latest policy state dict]
        self.version = -1

    @property
    def replacements(self) -> int:
        return self.scorer.replacements + (self.rollout.replacements if self.rollout else 0)

    def sync(self, policy: torch.nn.Module, version: int) -> float:
        """The policy's weights to every rollout worker; seconds taken."""
        started = time.perf_counter()
        self.weights, self.version = push_weights(self.rollout, policy, version), version
        return time.perf_counter() - started

    def generate(self, prompts: list[list[int]], iteration: int) -> tuple[list[list[int]], list[bool]]:
        """Responses to `prompts`, split in contiguous shares over the rollout workers."""
        shares = [share for share in np.array_split(np.arange(len(prompts)), len(self.rollout.handles)) if len(share)]
        args = [
            ([prompts[i] for i in share], rollout_seed(self.seed, iteration, number), self.weights, self.version)
            for number, share in enumerate(shares)
        ]
        tokens: list[list[int]] = []
        stopped: list[bool] = []
        for result in self.rollout.call("generate", args):
            tokens += result["tokens"]
            stopped += result["stopped"]
        return tokens, stopped

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, Any]:
        return self.scorer.call("score", [(prompts, responses)])[0]
