"""Online reinforcement learning from rewards (PPO, GRPO) for a policy that was fine-tuned first.

The learner is a Ray Train worker group (one DeepSpeed engine per rank, ZeRO 0-2) whose
worker function (`learner.learner_worker`) runs the whole loop; its rank 0 drives every
iteration through Ray actors by role, as veRL's single controller does, and every rank
trains on its share of the batch:

    sync weights ─► rollout workers generate ─► reward scorer ─► rank 0 broadcasts the batch
        ▲                                                              │
        └──────── every rank: reference log-probs, advantages, epochs of minibatches ◄┘

* `config.py`: the `rl.`, `reward.`, `kl.`, `ppo.` and `grpo.` sections.
* `prompts.py`: the prepared prompt set (the only data RL reads).
* `rollout.py`: `RolloutWorker` (a plain copy of the policy that samples with the KV cache)
  and `ActorRole`, which replaces an actor that dies and retries its share.
* `reward.py`: `RewardScorer` (a reward model or an imported function) and the checks of what it returns.
* `controller.py`: rank 0's side of an iteration (weights out, rollouts and rewards in).
* `models.py`: the critic (`ValueModel`) and `PolicyCritic`, the one module the engine trains.
* `batch.py`: rollouts as padded tensors; the no-grad pass that scores them (old and reference
  log-probs, entropy, exact KL, values).
* `objectives.py`: GAE, group-normalised advantages, the clipped surrogate, KL estimators, the
  adaptive KL coefficient.
* `algorithms.py`: PPO and GRPO as the learner uses them (critic, advantages, loss).
* `learner.py`: the loop itself, metrics, checkpoints and resume.
"""
