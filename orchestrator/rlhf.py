"""`python -m orchestrator.rlhf`: the whole path in one command, pretrain -> SFT -> reward model -> DPO -> PPO -> GRPO.

Each stage a nested child run under one MLflow parent run; a rerun skips finished stages,
resumes an interrupted one and re-runs a changed one (`orchestrator.stages.chain`).
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.chain import parse_cli, run_chain


def main(argv: list[str] | None = None) -> None:
    run_chain(parse_cli(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
