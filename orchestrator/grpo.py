"""`python -m orchestrator.grpo`: GRPO from an SFT checkpoint: group-normalised rewards, no critic.

The driver is `orchestrator.stages.rl`; the learner is `workloads.rl.learner`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.rl import parse_rl_cli, run_rl


def main(argv: list[str] | None = None) -> None:
    run_rl(parse_rl_cli("grpo", argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
