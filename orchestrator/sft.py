"""`python -m orchestrator.sft`: supervised fine-tuning from a pretrain checkpoint (loss on response tokens only).

The driver is `orchestrator.stages.sft` (on `orchestrator.stages.finetuning`); the training is `workloads.stages.sft`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.sft import SFT


def main(argv: list[str] | None = None) -> None:
    SFT.main(argv)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
