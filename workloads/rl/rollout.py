"""Rollout workers (plain copies of the policy that sample with the KV cache) and Ray actor roles.

A `RolloutWorker` starts without trained weights: before each batch the learner's rank 0
puts the policy's state dict in the object store once and every worker loads it. A
replacement for a worker that died therefore needs only the constructor's arguments,
which `ActorSpec` keeps: `ActorRole` calls all actors of one role together, and when one
dies it starts a replacement and retries that actor's share (the shares' sampling seeds do
not depend on which actor runs them, so a retried share gives the same rollouts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError

from workloads.checkpoints.loading import load_weights_into
from workloads.generation import Generated, Sampling, generate
from workloads.model import GPT, ModelConfig

# A role whose replacements keep dying is not going to recover: fail the iteration (and let Ray
# Train's FailureConfig decide) instead of replacing forever.
MAX_REPLACEMENTS_IN_A_ROW = 3


def sample_rollouts(
    model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling, eos_id: int, seed: int
) -> Generated:
    """Responses to `prompts` (each opening with end-of-document), stopping at end-of-document."""
    room = model.cfg.max_seq_len - max(map(len, prompts))  # the driver checked every prompt leaves room
    return generate(
        model,
        prompts,
        min(max_new_tokens, room),
        sampling,
        eos_id=eos_id,
        generator=torch.Generator().manual_seed(seed),
    )


class RolloutWorker:
    """One copy of the policy generating rollouts (a Ray actor of separated mode, 1 thread)."""

    def __init__(self, model: dict[str, Any], sampling: dict[str, Any], max_new_tokens: int, eos_id: int):
        torch.set_num_threads(1)
        # Weights arrive from the learner (load_weights) before the first batch: no need to read init_from here.
        self.model = GPT(ModelConfig(**{**model, "init_from": ""})).eval()
        self.sampling = Sampling(**sampling)
        self.max_new_tokens = max_new_tokens
        self.eos_id = eos_id
        self.version = -1  # the learner's update count whose weights this copy holds

    def load_weights(self, weights: list, version: int) -> None:
        """weights: [ObjectRef of the policy's state dict] (in a list, so Ray passes the ref, not the value)."""
        load_weights_into(self.model, ray.get(weights[0]), "the learner's policy")  # a tied head is re-tied
        self.version = version

    def generate(self, prompts: list[list[int]], seed: int, weights: list, version: int) -> dict[str, Any]:
        if version != self.version:  # a replacement started after the sync: catch up first
            self.load_weights(weights, version)
        out = sample_rollouts(self.model, prompts, self.max_new_tokens, self.sampling, self.eos_id, seed)
        return {"tokens": out.tokens, "stopped": out.stopped, "seconds": out.seconds}

    def pid(self) -> int:
        return os.getpid()


@dataclass
class ActorSpec:
    """How to start (and restart) one actor of a role."""

    cls: type
    kwargs: dict[str, Any]
    num_cpus: float
    names: list[str] = field(default_factory=list)  # names of the first actors (replacements stay anonymous)

    def start(self, index: int | None = None):
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if index is not None and index < len(self.names):
            options["name"] = self.names[index]
        return ray.remote(self.cls).options(**options).remote(**self.kwargs)


class ActorRole:
    """The actors of one role, called together; an actor that dies is replaced and its call retried."""

    def __init__(self, role: str, spec: ActorSpec, handles: list):
        self.role = role
        self.spec = spec
        self.handles = list(handles)
        self.replacements = 0  # over the run so far (a metric)

    def call(self, method: str, args: Sequence[tuple]) -> list:
        """`handles[i].method(*args[i])` for every i at once; the results in order."""
        pending = dict(enumerate(args))
        results: list = [None] * len(args)
        failures_in_a_row = 0
        while pending:
            refs = {i: getattr(self.handles[i], method).remote(*pending[i]) for i in pending}
            dead = []
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                    del pending[i]
                except RayActorError as e:
                    dead.append((i, e))
            if not dead:
                break
            failures_in_a_row += 1
            if failures_in_a_row > MAX_REPLACEMENTS_IN_A_ROW:
                raise RuntimeError(
                    f"{self.role} actors died {failures_in_a_row} times in a row "
                    f"(last: {str(dead[-1][1]).splitlines()[0]})"
                )
            for i, error in dead:
                print(
                    f"warning: {self.role} actor {i} died ({type(error).__name__}); starting a replacement and "
                    f"retrying its share",
                    flush=True,
                )
                self.handles[i] = self.spec.start()
                self.replacements += 1
        return results

    def stop(self) -> None:
        for handle in self.handles:
            ray.kill(handle)
