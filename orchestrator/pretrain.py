"""`python -m orchestrator.pretrain`: prepare data if needed, then DeepSpeed training on Ray Train.

The same command runs on a laptop (it starts a local Ray and trains on the
embedded default corpus) and on a GPU cluster (`ray job submit -- python -m
orchestrator.pretrain --config gpt-350m-gpu ...`). The driver is
`orchestrator.stages.pretrain`; the training itself is `workloads.loop.train_worker`
running `workloads.stages.pretrain.PretrainStage`.
"""

from __future__ import annotations

import sys

from orchestrator.config.parser import run_cli
from orchestrator.stages.pretrain import PRETRAIN


def main(argv: list[str] | None = None) -> None:
    PRETRAIN.main(argv)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
