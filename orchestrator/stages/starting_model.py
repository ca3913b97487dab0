"""The model a follow-on stage starts from: `model.init_from` resolved on the driver before any worker starts.

`model.init_from` may be a checkpoint or run directory of this project, an MLflow run id
(resolved to that run's final checkpoint) or `hf:DIR`; the stage's model shape and tokenizer
come from it, and a shape field set to something else is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from orchestrator.launch.tracking import resolve_tracking_uri
from workloads.checkpoints.loading import RUN_STATE_FILE, read_description, resolve_checkpoint
from workloads.errors import UserInputError
from workloads.hf_interop import hf_tokenizer_path, read_hf_model_config
from workloads.model import ModelConfig
from workloads.tokenizer import Tokenizer

# Fields that fix the model's shape: they come from the starting checkpoint.
SHAPE_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "max_seq_len",
    "mlp",
    "ffn_hidden",
    "norm",
    "position",
    "rope_theta",
    "norm_eps",
    "tie_embeddings",
)
MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")


def resolve_init_from(value: str, tracking_uri: str) -> str:
    """`checkpoint:DIR` or `hf:DIR` for what `model.init_from` names."""
    if not value:
        raise UserInputError("model.init_from: required: a checkpoint or run directory, an MLflow run id, or hf:DIR")
    if value.startswith("hf:"):
        return f"hf:{Path(value.removeprefix('hf:')).resolve()}"
    path = value.removeprefix("checkpoint:")
    if Path(path).exists():
        return f"checkpoint:{resolve_checkpoint(path)}"
    if MLFLOW_RUN_ID.fullmatch(value):
        # mlflow: only an MLflow run id as model.init_from needs the tracking store
        from mlflow.tracking import MlflowClient

        uri = resolve_tracking_uri(tracking_uri)
        try:
            run = MlflowClient(uri).get_run(value)
        except Exception as e:  # noqa: BLE001 - any failure to find it is the user's to fix
            raise UserInputError(
                f"model.init_from: MLflow run {value} not found at {uri} ({str(e).splitlines()[0]})"
            ) from None
        checkpoint = run.data.tags.get("orchestrator.final_checkpoint")
        if not checkpoint:
            raise UserInputError(f"model.init_from: MLflow run {value} has no final checkpoint (unfinished?)")
        return f"checkpoint:{resolve_checkpoint(checkpoint)}"
    raise UserInputError(f"model.init_from: {value!r} is no checkpoint or run directory, MLflow run id or hf:DIR")


def starting_model(init_from: str) -> tuple[ModelConfig, Path]:
    """The starting model's config and its tokenizer file."""
    if init_from.startswith("hf:"):
        directory = init_from.removeprefix("hf:")
        return read_hf_model_config(directory), hf_tokenizer_path(directory)
    checkpoint = Path(init_from.removeprefix("checkpoint:"))
    description = read_description(checkpoint)
    if description.get("kind", "language_model") != "language_model":
        raise UserInputError(f"model.init_from: {checkpoint} holds a {description['kind']}, not a language model")
    return ModelConfig(**description["model"]), checkpoint / description["tokenizer"]["file"]


def take_model_from_start(cfg) -> Path:
    """A stage tree's `model` section becomes the starting checkpoint's (init_from resolved; a shape field set to
    something else refused); returns the checkpoint's tokenizer file."""
    cfg.model.init_from = resolve_init_from(cfg.model.init_from, cfg.tracking.uri)
    start, tokenizer_file = starting_model(cfg.model.init_from)
    defaults = ModelConfig()
    for name in SHAPE_FIELDS:
        given, theirs = getattr(cfg.model, name), getattr(start, name)
        if given != getattr(defaults, name) and given != theirs:
            raise UserInputError(
                f"model.{name}={given!r} disagrees with the starting checkpoint's {theirs!r} "
                f"({cfg.model.init_from}); the model's shape comes from the checkpoint"
            )
    cfg.model = dataclasses.replace(start, init_from=cfg.model.init_from, dropout=cfg.model.dropout)
    return tokenizer_file


def starting_tokenizer(cfg) -> Tokenizer:
    """The starting model's tokenizer, checked to fit the stage tree's model (resolved by take_model_from_start)."""
    _, tokenizer_file = starting_model(cfg.model.init_from)
    tokenizer = Tokenizer.load(tokenizer_file)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise UserInputError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's ({tokenizer.vocab_size})"
        )
    return tokenizer


def lineage_tags(cfg, tokenizer: Tokenizer, parent_run_id: str) -> dict[str, str]:
    """MLflow tags naming what the stage starts from: its checkpoint, that checkpoint's run, the tokenizer."""
    tags = {"orchestrator.init_from": cfg.model.init_from, "orchestrator.tokenizer_sha256": tokenizer.sha256}
    if cfg.model.init_from.startswith("checkpoint:"):
        checkpoint = Path(cfg.model.init_from.removeprefix("checkpoint:"))
        tags["orchestrator.parent_checkpoint"] = str(checkpoint)
        for run_dir in checkpoint.parents[:2]:
            if (run_dir / RUN_STATE_FILE).is_file():
                tags["orchestrator.parent_run_id"] = json.loads((run_dir / RUN_STATE_FILE).read_text())["mlflow_run_id"]
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # a nested child run of the chain's run
    return tags
