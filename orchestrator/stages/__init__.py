"""Stage drivers: one module per kind of stage, each its config tree and its launch on Ray Train.

`pretrain`; `finetuning` (SFT, reward model, DPO), which start from `starting_model` and sample
held-out prompts afterwards (`heldout`); `rl` (PPO, GRPO); `chain` runs them in order.
"""
