"""The modules the learner trains: the policy and, for PPO, a critic, wrapped as one for one engine.

One engine (one AdamW) trains both: the critic shares no weights with the policy, so the summed
loss gives each network exactly its own gradient, and one checkpoint holds both (the policy's
weights under `policy.`, which is what loading the checkpoint as a language model reads).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workloads.model import GPT, ScalarHeadModel

POLICY_PREFIX = "policy."


class ValueModel(ScalarHeadModel):
    """The critic: a scalar head read at every position, V(prefix up to t), (B, T).

    The same parameters, under the same names, as a reward model (`ScalarHeadModel`), so a critic
    can start from a reward model's checkpoint, head included.
    """

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        hidden = self.backbone.hidden_states(input_ids)  # (B, T, d_model)
        return self.score(hidden).squeeze(-1).float()  # (B, T)


class PolicyCritic(nn.Module):
    def __init__(self, policy: GPT, critic: ValueModel | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and, with a critic, values (B, T)."""
        values = self.critic(input_ids) if self.critic is not None else None
        return self.policy(input_ids), values
