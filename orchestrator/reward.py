"""`python -m orchestrator.reward`: a reward model (backbone + scalar head) trained on ranked responses.

The driver is `orchestrator.stages.finetuning`; the training is `workloads.stages.reward`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.finetuning import parse_stage_cli, run_stage


def main(argv: list[str] | None = None) -> None:
    run_stage("reward", parse_stage_cli("reward", argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
