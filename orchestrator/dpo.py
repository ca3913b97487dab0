"""`python -m orchestrator.dpo`: direct preference optimisation of a policy against a frozen reference.

The driver is `orchestrator.stages.dpo` (on `orchestrator.stages.finetuning`); the training is `workloads.stages.dpo`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.dpo import DPO


def main(argv: list[str] | None = None) -> None:
    DPO.main(argv)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
