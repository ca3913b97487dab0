"""Scoring a checkpoint on text or a prepared dataset with training's definitions, and recording it in MLflow.

The command is `python -m orchestrator.evaluate`; the arithmetic is `workloads.evaluation`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from orchestrator.launch.tracking import resolve_tracking_uri
from workloads.checkpoints.loading import LoadedModel
from workloads.data.loader import PackedDataset, load_manifest
from workloads.errors import UserInputError
from workloads.evaluation import eval_metrics, eval_sample_indices, evaluate, score_tokens

EXPERIMENT = "evaluate"


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
        raise UserInputError(
            f"{dataset_dir}: prepared with another tokenizer than the checkpoint's "
            f"({manifest['tokenizer']['sha256'][:12]}... vs {loaded.tokenizer.sha256[:12]}...)"
        )
    settings = loaded.description["evaluation"]
    val_set = PackedDataset(dataset_dir, "val")
    indices = eval_sample_indices(val_set.num_samples, settings["eval_samples"], rank=0, world=1)
    byte_lengths = torch.tensor(loaded.tokenizer.token_byte_lengths(), device=device)
    metrics = evaluate(loaded.model, val_set, indices, settings["micro_batch_size"], byte_lengths, device)
    loaded.model.eval()
    return {f"{dataset_dir} (validation)": {key.removeprefix("eval/"): value for key, value in metrics.items()}}


def record(loaded: LoadedModel, results: dict, tracking_uri: str) -> str:
    """Log the evaluation as its own MLflow run, tagged with the training run; returns its id."""
    # mlflow: only when the evaluation is recorded (--no-tracking skips it)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri or loaded.tracking_uri)
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
    tags = {
        "orchestrator.stage": "evaluate",
        "orchestrator.checkpoint": str(loaded.checkpoint),
        "orchestrator.checkpoint_step": str(loaded.step),
        "orchestrator.tokenizer_sha256": loaded.tokenizer.sha256,
    }
    if loaded.mlflow_run_id:
        tags["orchestrator.parent_run_id"] = loaded.mlflow_run_id
    run_id = client.create_run(experiment_id, run_name=f"evaluate-step{loaded.step}", tags=tags).info.run_id
    now = int(time.time() * 1000)
    metrics = []
    for number, (name, values) in enumerate(results.items()):
        prefix = "eval" if len(results) == 1 or name == "all" else f"eval_{number}"
        metrics += [Metric(f"{prefix}/{key}", float(value), now, loaded.step) for key, value in values.items()]
    params = [Param("checkpoint", str(loaded.checkpoint)), Param("inputs", json.dumps(list(results))[:6000])]
    client.log_batch(
        run_id, metrics=metrics, params=params, tags=[RunTag("mlflow.note.content", "orchestrator.evaluate")]
    )
    client.log_dict(run_id, results, "evaluation.json")
    client.set_terminated(run_id, "FINISHED")
    return run_id
