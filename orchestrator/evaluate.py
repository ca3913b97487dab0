"""`python -m orchestrator.evaluate CHECKPOINT --text FILE ... | --dataset DIR`: loss, perplexity, bits per byte.

Loss, perplexity and bits per byte of a checkpoint on any UTF-8 text, with the
definitions training's evaluation uses: every file is one document (it follows an
end-of-document token and ends with one), scored in windows of the model's context,
every token once; bits per byte = summed nats / UTF-8 bytes / ln 2. `--dataset DIR`
repeats training's own evaluation on a prepared dataset (the same validation
samples, packing and masks), so its loss equals the training run's final
`eval/loss` for the same weights. The result goes to MLflow as a run of its own,
tagged with the checkpoint's training run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from orchestrator.config.parser import run_cli
from orchestrator.model_tools.evaluation import record, score_dataset, score_texts
from workloads.checkpoints.loading import load_checkpoint
from workloads.errors import UserInputError

EXPERIMENT = "evaluate"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoint", help="checkpoint directory, <run>/best_checkpoint, or a run directory (its latest checkpoint)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", type=Path, action="append", help="a UTF-8 text file to score (repeatable)")
    source.add_argument(
        "--dataset", type=Path, help="a prepared dataset: run training's evaluation on its validation split"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (--text)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--tracking-uri", default="", help="MLflow tracking URI; default: the training run's, else as pretrain"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not record the evaluation in MLflow")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size: must be >= 1, got {args.batch_size}")
    loaded = load_checkpoint(args.checkpoint, args.device)
    if args.dataset is not None:
        results = score_dataset(loaded, args.dataset, args.device)
    else:
        results = score_texts(loaded, args.text, args.batch_size, args.device)
    run_id = "" if args.no_tracking else record(loaded, results, args.tracking_uri)
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(loaded.checkpoint),
                    "step": loaded.step,
                    "mlflow_run_id": run_id,
                    "results": results,
                },
                indent=2,
            )
        )
        return
    for name, values in results.items():
        print(f"{name}: loss {values['loss']:.6f} | ppl {values['ppl']:.3f} | bpb {values['bpb']:.4f}")
    print(
        f"evaluate: checkpoint {loaded.checkpoint} (step {loaded.step})" + (f" | MLflow run {run_id}" if run_id else "")
    )


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
