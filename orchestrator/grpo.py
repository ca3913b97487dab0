"""`python -m orchestrator.grpo`: GRPO from an SFT checkpoint: group-normalised rewards, no critic.

The driver is `orchestrator.stages.grpo` (on `orchestrator.stages.rl`); the learner is `workloads.rl.learner`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.grpo import GRPO


def main(argv: list[str] | None = None) -> None:
    GRPO.main(argv)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
