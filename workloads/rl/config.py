"""The sections of an RL run that the learner and its roles read: `rl.`, `reward.`, `kl.`, `ppo.`, `grpo.`.

The driver (`orchestrator.stages.rl`) declares the rest of the tree (run, data, model, train, ...)
and checks how these sections fit the others (batch arithmetic, the model's context).
"""

from __future__ import annotations

from dataclasses import dataclass

from workloads.errors import UserInputError
from workloads.schema import option

MODES = ("separated", "colocated")
CRITIC_INITS = ("policy", "reward")


@dataclass
class RolloutConfig:
    """Rollouts: who generates, how many and how they are sampled; how the learner goes over them."""

    mode: str = option(
        "separated",
        "separated: rollout actors generate while the learner waits, weights synced after every update | "
        "colocated: no rollout actors, the learner ranks generate with their own policy (generate, then learn)",
    )
    rollout_workers: int = option(2, "separated mode: rollout actors, each holding a plain copy of the policy")
    actor_cpus: float = option(
        0.25, "CPUs reserved for each rollout actor and for the reward scorer (fractions allowed; each runs 1 thread)"
    )
    prompts_per_iteration: int = option(16, "prompts drawn per iteration (GRPO answers each grpo.group_size times)")
    max_new_tokens: int = option(24, "longest response in tokens; prompt + response must fit model.max_seq_len")
    temperature: float = option(1.0, "sampling temperature (> 0); the learner scores tokens at the same temperature")
    top_k: int = option(0, "sample from the k most likely tokens only; 0 = off")
    top_p: float = option(1.0, "sample from the smallest set of tokens whose probability reaches top_p; 1 = off")
    epochs: int = option(1, "passes over each rollout batch (PPO usually 2-4: the clipped ratio keeps them near)")
    minibatch_size: int = option(
        16,
        "sequences per optimizer step over all learner ranks; divides the rollout batch. Each rank runs its "
        "share in forward passes of train.micro_batch_size sequences (accumulated)",
    )
    clip_ratio: float = option(
        0.2, "the probability ratio new/old policy is clipped to [1 - clip_ratio, 1 + clip_ratio]"
    )
    seed: int = option(0, "seed of rollout sampling and minibatch order (each iteration derives its own)")
    samples_per_iteration: int = option(4, "rollouts per iteration kept for the MLflow table of samples")

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserInputError(f"rl.mode: {self.mode!r} is not one of {' | '.join(MODES)}")
        for name in ("rollout_workers", "prompts_per_iteration", "max_new_tokens", "epochs", "minibatch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                raise UserInputError(f"rl.{name}: must be >= 1, got {value}")
        if not self.actor_cpus > 0:
            raise UserInputError(f"rl.actor_cpus: must be > 0, got {self.actor_cpus}")
        if not self.temperature > 0:
            raise UserInputError(
                f"rl.temperature: must be > 0 (the policy's log-probabilities are taken at it), got {self.temperature}"
            )
        if self.top_k < 0:
            raise UserInputError(f"rl.top_k: must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserInputError(f"rl.top_p: must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.clip_ratio < 1.0:
            raise UserInputError(f"rl.clip_ratio: must be in (0, 1), got {self.clip_ratio}")
        if self.samples_per_iteration < 0:
            raise UserInputError(f"rl.samples_per_iteration: must be >= 0, got {self.samples_per_iteration}")


@dataclass
class RewardConfig:
    """Where rewards come from (a reward model or a function, exactly one) and what bad rewards do."""

    model: str = option(
        "", "a reward-model checkpoint or run directory (orchestrator.reward); its tokenizer must be the policy's"
    )
    function: str = option(
        "",
        "import path package.module:function, called with (prompts, responses) lists of strings and returning "
        "one float per response; imported inside the reward actor, so its module must be importable there (the "
        "job's working directory or runtime env). workloads.task:property_reward is the built-in task's rule",
    )
    max_bad_batches: int = option(
        3,
        "a batch whose rewards are NaN/inf, of the wrong length or raise is skipped (rl/skipped_batches); this "
        "many in a row stop the run, its last checkpoint kept",
    )

    def validate(self) -> None:
        if bool(self.model) == bool(self.function):
            raise UserInputError(
                "reward: set exactly one of reward.model (a reward-model checkpoint) and "
                "reward.function (package.module:function)"
            )
        if self.function:
            module, _, name = self.function.partition(":")
            if not module or not name:
                raise UserInputError(
                    f"reward.function: {self.function!r} is not an import path package.module:function"
                )
        if isinstance(self.max_bad_batches, bool) or self.max_bad_batches < 1:
            raise UserInputError(f"reward.max_bad_batches: must be >= 1, got {self.max_bad_batches}")

    @property
    def source(self) -> str:
        """The reward as messages name it."""
        return f"reward.model={self.model}" if self.model else f"reward.function={self.function}"


@dataclass
class KLConfig:
    """The pull toward the reference (the starting policy): PPO subtracts coef x k1 per token from the
    reward, GRPO adds coef x k3 per token to the loss."""

    coef: float = option(0.05, "KL coefficient (its starting value when adaptive)")
    adaptive: bool = option(
        False, "steer the coefficient toward kl.target (Ziegler et al. 2019's proportional controller)"
    )
    target: float = option(
        0.1,
        "per-token KL to the reference (nats) the run is meant to stay near: the adaptive coefficient steers "
        "toward it; a fixed one is chosen to keep the run under it (the recipes' tests check that)",
    )
    horizon: int = option(
        10000, "adaptive: sequences over which a full proportional correction acts (Ziegler's K_beta)"
    )

    def validate(self) -> None:
        if self.coef < 0:
            raise UserInputError(f"kl.coef: must be >= 0, got {self.coef}")
        if not self.target > 0:
            raise UserInputError(f"kl.target: must be > 0, got {self.target}")
        if self.horizon < 1:
            raise UserInputError(f"kl.horizon: must be >= 1, got {self.horizon}")
        if self.adaptive and self.coef == 0:
            raise UserInputError(
                "kl.coef: an adaptive coefficient needs a starting value > 0 (it scales multiplicatively)"
            )


@dataclass
class PPOConfig:
    """PPO's critic and advantages (Schulman et al. 2017; for language models Ziegler et al. 2019, Ouyang et al.
    2022)."""

    gamma: float = option(1.0, "discount per token in GAE (1: the sequence's reward counts fully at every token)")
    lam: float = option(0.95, "GAE lambda: 0 = one-step TD advantages, 1 = Monte-Carlo returns minus the value")
    value_coef: float = option(0.5, "weight of the critic's loss next to the policy's")
    value_clip: float = option(0.2, "keep new value predictions within this of the rollout's (0 = unclipped)")
    critic_init: str = option(
        "policy",
        "the critic's backbone starts from: policy (the starting policy's weights, a fresh value head) | "
        "reward (the reward model's backbone and head; needs reward.model)",
    )

    def validate(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise UserInputError(f"ppo.gamma: must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.lam <= 1.0:
            raise UserInputError(f"ppo.lam: must be in [0, 1], got {self.lam}")
        if self.value_coef <= 0:
            raise UserInputError(f"ppo.value_coef: must be > 0, got {self.value_coef}")
        if self.value_clip < 0:
            raise UserInputError(f"ppo.value_clip: must be >= 0, got {self.value_clip}")
        if self.critic_init not in CRITIC_INITS:
            raise UserInputError(f"ppo.critic_init: {self.critic_init!r} is not one of {' | '.join(CRITIC_INITS)}")


@dataclass
class GRPOConfig:
    """GRPO (Shao et al. 2024, DeepSeekMath): no critic; each response's advantage is its reward
    normalised within the group of responses to the same prompt."""

    group_size: int = option(4, "responses sampled per prompt (>= 2: a response is judged against its group)")

    def validate(self) -> None:
        if isinstance(self.group_size, bool) or self.group_size < 2:
            raise UserInputError(
                f"grpo.group_size: {self.group_size} must be >= 2 (advantages compare the responses "
                "to one prompt with each other)"
            )
