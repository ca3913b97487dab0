"""The DPO stage: a policy against its frozen reference on preference pairs, from SFT (`dpo.` is its section)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from orchestrator.stages.finetuning import FinetuneDriver, StageConfig
from workloads.stages.dpo import DPOConfig


@dataclass
class DPOStageConfig(StageConfig):
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)


class DPODriver(FinetuneDriver):
    name = "dpo"
    summary = "Direct preference optimisation of a policy against a frozen reference on preference pairs."
    tree = DPOStageConfig
    starts_from = "sft"

    def worker_options(self, cfg: DPOStageConfig) -> dict[str, Any]:
        return dataclasses.asdict(cfg.dpo)


DPO = DPODriver()
