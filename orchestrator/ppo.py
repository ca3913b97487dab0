"""`python -m orchestrator.ppo`: PPO from an SFT checkpoint with a reward model or function.

The driver is `orchestrator.stages.ppo` (on `orchestrator.stages.rl`); the learner is `workloads.rl.learner`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.ppo import PPO


def main(argv: list[str] | None = None) -> None:
    PPO.main(argv)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
