"""`python -m orchestrator.sft`: supervised fine-tuning from a pretrain checkpoint (loss on response tokens only).

The driver is `orchestrator.stages.finetuning`; the training is `workloads.stages.sft`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.finetuning import parse_stage_cli, run_stage


def main(argv: list[str] | None = None) -> None:
    run_stage("sft", parse_stage_cli("sft", argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
