"""`python -m orchestrator.prepare`: prepare a pretrain recipe's dataset with Ray Data, unless already prepared.

    python -m orchestrator.prepare [--config RECIPE] [--data.corpus=... ...] [--verify]

Takes the same recipes and overrides as pretrain; the pipeline is
`orchestrator.data.pretraining`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from orchestrator.config.parser import parse_tree
from orchestrator.config.sections import dataset_root
from orchestrator.data.checks import verify_dataset
from orchestrator.data.pretraining import prepare_dataset
from orchestrator.stages.pretrain import PretrainConfig, resolve_model_source
from workloads.errors import UserInputError

SUMMARY = (
    "Prepare the dataset of a pretrain recipe (its data and tokenizer sections) with Ray Data, unless already "
    "prepared.\n\n--verify      also re-read every corpus source and re-hash the tokenizer and every shard\n"
    "              against the manifest, instead of trusting checksums recorded for unchanged files"
)


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit status: 0, or 2 after one `error:` line for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verify = "--verify" in argv  # re-hash every source and shard instead of trusting recorded checksums
    argv = [arg for arg in argv if arg != "--verify"]
    try:
        cfg = parse_tree(
            PretrainConfig,
            argv,
            "orchestrator.prepare",
            SUMMARY,
            default_recipe="default",
            resolve=resolve_model_source,
        )
        root = dataset_root(cfg.run.output_dir, cfg.data.dataset_dir)
        dataset_dir = prepare_dataset(cfg.data, cfg.tokenizer, root, refresh_digests=verify)
        if verify:
            verify_dataset(dataset_dir)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
