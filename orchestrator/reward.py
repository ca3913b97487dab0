"""`python -m orchestrator.reward`: a reward model (backbone + scalar head) trained on ranked responses.

The driver is `orchestrator.stages.reward` (on `orchestrator.stages.finetuning`); the training is
`workloads.stages.reward`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.reward import REWARD


def main(argv: list[str] | None = None) -> None:
    REWARD.main(argv)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
