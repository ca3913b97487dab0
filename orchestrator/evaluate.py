"""`python -m orchestrator.evaluate CHECKPOINT --text FILE [--text FILE ...] | --dataset DIR`.

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
import time
from pathlib import Path

import torch

from orchestrator.config import run_cli
from orchestrator.tracking import resolve_tracking_uri
from workloads.checkpoint_loading import LoadedModel, load_checkpoint
from workloads.data.loader import PackedDataset, load_manifest
from workloads.errors import UserInputError
from workloads.evaluation import eval_metrics, eval_sample_indices, evaluate, score_tokens

EXPERIMENT = "evaluate"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint directory, <run>/best_checkpoint, or a run directory (its latest checkpoint)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", type=Path, action="append", help="a UTF-8 text file to score (repeatable)")
    source.add_argument("--dataset", type=Path, help="a prepared dataset: run training's evaluation on its validation split")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (--text)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI; default: the training run's, else as pretrain")
    parser.add_argument("--no-tracking", action="store_true", help="do not record the evaluation in MLflow")
    return parser.parse_args(argv)


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserInputError(f"{path}: cannot read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not UTF-8 text (byte {e.start})") from e


def score_texts(loaded: LoadedModel, paths: list[Path], batch_size: int, device) -> dict[str, dict[str, float]]:
    tokenizer = loaded.tokenizer
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), device=device)
    results, overall = {}, torch.zeros(3, dtype=torch.float64, device=device)
    for path in paths:
        tokens = [tokenizer.eos_id, *tokenizer.encode(read_text(path)), tokenizer.eos_id]
        totals = score_tokens(loaded.model, tokens, loaded.config.max_seq_len, batch_size, byte_lengths, device)
        overall += totals
        results[str(path)] = with_counts(totals)
    if len(paths) > 1:
        results["all"] = with_counts(overall)
    return results


def with_counts(totals: torch.Tensor) -> dict[str, float]:
    metrics = {key.removeprefix("eval/"): value for key, value in eval_metrics(totals).items()}
    return {**metrics, "tokens": int(totals[1]), "bytes": int(totals[2])}


def score_dataset(loaded: LoadedModel, dataset_dir: Path, device) -> dict[str, dict[str, float]]:
    manifest = load_manifest(dataset_dir)
    if manifest["tokenizer"]["sha256"] != loaded.tokenizer.sha256:
        raise UserInputError(f"{dataset_dir}: prepared with another tokenizer than the checkpoint's "
                             f"({manifest['tokenizer']['sha256'][:12]}... vs {loaded.tokenizer.sha256[:12]}...)")
    settings = loaded.description["evaluation"]
    val_set = PackedDataset(dataset_dir, "val")
    indices = eval_sample_indices(val_set.num_samples, settings["eval_samples"], rank=0, world=1)
    byte_lengths = torch.tensor(loaded.tokenizer.token_byte_lengths(), device=device)
    metrics = evaluate(loaded.model, val_set, indices, settings["micro_batch_size"], byte_lengths, device)
    loaded.model.eval()
    return {f"{dataset_dir} (validation)": {key.removeprefix("eval/"): value for key, value in metrics.items()}}


def record(loaded: LoadedModel, results: dict, args: argparse.Namespace) -> str:
    """Log the evaluation as its own MLflow run, tagged with the training run; returns its id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(args.tracking_uri or loaded.tracking_uri)
    client = MlflowClient(uri)
    experiment_id = None
    if loaded.mlflow_run_id:
        try:
            experiment_id = client.get_run(loaded.mlflow_run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - the training run lives in another store: use our own experiment
            experiment_id = None
    if experiment_id is None:
        found = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = found.experiment_id if found else client.create_experiment(EXPERIMENT)
    tags = {"orchestrator.stage": "evaluate", "orchestrator.checkpoint": str(loaded.checkpoint),
            "orchestrator.checkpoint_step": str(loaded.step), "orchestrator.tokenizer_sha256": loaded.tokenizer.sha256}
    if loaded.mlflow_run_id:
        tags["orchestrator.parent_run_id"] = loaded.mlflow_run_id
    run_id = client.create_run(experiment_id, run_name=f"evaluate-step{loaded.step}", tags=tags).info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for number, (name, values) in enumerate(results.items()):
        prefix = "eval" if len(results) == 1 or name == "all" else f"eval_{number}"
        metrics += [Metric(f"{prefix}/{key}", float(value), now, loaded.step) for key, value in values.items()]
    params = [Param("checkpoint", str(loaded.checkpoint)), Param("inputs", json.dumps(list(results))[:6000])]
    client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("mlflow.note.content", "orchestrator.evaluate")])
    client.log_dict(run_id, results, "evaluation.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size: must be >= 1, got {args.batch_size}")
    loaded = load_checkpoint(args.checkpoint, args.device)
    if args.dataset is not None:
        results = score_dataset(loaded, args.dataset, args.device)
    else:
        results = score_texts(loaded, args.text, args.batch_size, args.device)
    run_id = "" if args.no_tracking else record(loaded, results, args)
    if args.json:
        print(json.dumps({"checkpoint": str(loaded.checkpoint), "step": loaded.step, "mlflow_run_id": run_id,
                          "results": results}, indent=2))
        return
    for name, values in results.items():
        print(f"{name}: loss {values['loss']:.6f} | ppl {values['ppl']:.3f} | bpb {values['bpb']:.4f}")
    print(f"evaluate: checkpoint {loaded.checkpoint} (step {loaded.step})" + (f" | MLflow run {run_id}" if run_id else ""))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
