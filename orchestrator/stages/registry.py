"""Every stage driver, in chain order: a new stage is its module and one line here."""

from __future__ import annotations

from orchestrator.stages.base import StageDriver
from orchestrator.stages.dpo import DPO
from orchestrator.stages.grpo import GRPO
from orchestrator.stages.ppo import PPO
from orchestrator.stages.pretrain import PRETRAIN
from orchestrator.stages.reward import REWARD
from orchestrator.stages.sft import SFT

DRIVERS: dict[str, StageDriver] = {driver.name: driver for driver in (PRETRAIN, SFT, REWARD, DPO, PPO, GRPO)}
