"""The SFT stage: loss on response tokens only, from a pretrain checkpoint (InstructGPT's first step)."""

from __future__ import annotations

from orchestrator.stages.finetuning import FinetuneDriver


class SFTDriver(FinetuneDriver):
    name = "sft"
    summary = (
        "Supervised fine-tuning on prompt/response records (loss on response tokens only), DeepSpeed on Ray Train."
    )
    starts_from = "pretrain"


SFT = SFTDriver()
