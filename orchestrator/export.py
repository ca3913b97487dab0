"""`python -m orchestrator.export CHECKPOINT --format hf|safetensors --out DIR`: files other tools read.

    python -m orchestrator.export CHECKPOINT --format hf|safetensors --out DIR [--register NAME]

Turns any checkpoint this project writes (a checkpoint directory, a run's
`best_checkpoint` link, or a run directory) into files other tools read:

  hf           a transformers model directory (`AutoModelForCausalLM` / `AutoTokenizer`
               load it with no custom code: Llama or GPT-2, see `workloads.hf_interop`)
  safetensors  this project's own GPT state dict, its ModelConfig as config.json, the tokenizer

The export is written to a hidden directory beside DIR and renamed into place, so DIR
is either absent or complete; an existing non-empty DIR is refused and left untouched.

`--register NAME` (hf only) logs the exported directory to the checkpoint's MLflow
run with MLflow's transformers flavor (`mlflow.transformers.load_model` gives a
text-generation pipeline) and registers it as a new version of model NAME. A
checkpoint whose run is not in that tracking store (or that has none) is logged
to a new run in experiment "export", tagged with the checkpoint and its training run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.config.parser import run_cli
from orchestrator.model_tools.exporting import FORMATS, refuse_occupied, register, say, write_then_rename
from workloads.checkpoints.loading import load_checkpoint
from workloads.errors import UserInputError
from workloads.hf_interop import hf_family


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="checkpoint directory, best_checkpoint link or run directory")
    parser.add_argument("--format", choices=sorted(FORMATS), required=True)
    parser.add_argument("--out", required=True, help="directory to create (absent or empty)")
    parser.add_argument("--register", metavar="NAME", help="register the export in the MLflow Model Registry (hf only)")
    parser.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI for --register (default: the training run's, else MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db here)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    refuse_occupied(out)
    if args.register and args.format != "hf":
        raise UserInputError(
            f"--register: only --format hf is registered (MLflow's transformers flavor), not {args.format}"
        )
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    if args.format == "hf":
        hf_family(loaded.config)  # refuse a model with no transformers equivalent before writing anything
    write_then_rename(out, lambda tmp: FORMATS[args.format](loaded.model, loaded.tokenizer, tmp))
    say(f"wrote {args.format} export of {loaded.checkpoint} (step {loaded.step}) to {out}")
    if args.register:
        register(out, args.register, loaded, args.tracking_uri)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
