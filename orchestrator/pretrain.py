"""`python -m orchestrator.pretrain`: prepare data if needed, then DeepSpeed training on Ray Train.

The same command runs on a laptop (it starts a local Ray and trains on the
embedded default corpus) and on a GPU cluster (`ray job submit -- python -m
orchestrator.pretrain --config gpt-350m-gpu ...`). The driver only builds configs
and launches; the training itself is `workloads.loop.train_worker` running
`workloads.stages.pretrain.PretrainStage`.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.config import parse_tree, run_cli
from orchestrator.dataset_checks import check_dataset
from orchestrator.launch import Launch, train_on_ray
from orchestrator.pretrain_config import PretrainConfig
from orchestrator.tracking import resolve_tracking_uri
from workloads.data.config import EMBEDDED_CORPUS
from workloads.data.shards import MANIFEST_FILE
from workloads.errors import UserInputError

SUMMARY = "Pretrain a GPT with DeepSpeed on Ray Train; prepares the corpus first when needed."


def parse_cli(argv: list[str] | None, prog: str = "orchestrator.pretrain") -> PretrainConfig:
    return parse_tree(PretrainConfig, argv, prog, SUMMARY, default_recipe="default", resolve=resolve_model_source)


def resolve_model_source(cfg: PretrainConfig) -> None:
    """With `model.init_from=hf:DIR`, the model's shape and the tokenizer come from DIR.

    The shape fields of the recipe give way to the checkpoint's config.json; how the
    model is trained (attention_mask, dropout) stays as configured. The directory is
    made absolute, since workers may run elsewhere.
    """
    if not cfg.model.init_from.startswith("hf:"):
        return
    from workloads.hf_interop import hf_tokenizer_path, read_hf_model_config

    hf_dir = Path(cfg.model.init_from.removeprefix("hf:")).resolve()
    imported = read_hf_model_config(hf_dir)
    cfg.model = dataclasses.replace(
        imported, init_from=f"hf:{hf_dir}", attention_mask=cfg.model.attention_mask, dropout=cfg.model.dropout
    )
    cfg.tokenizer.model_path = str(hf_tokenizer_path(hf_dir))


def absolute(path: str) -> str:
    """`path` made absolute against the working directory (symlinks kept); empty stays empty."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def absolute_tracking_uri(configured: str) -> str:
    """The tracking URI with a relative sqlite database path (`sqlite:///x.db`) or plain path made absolute.

    Empty stays empty when $MLFLOW_TRACKING_URI is set (nothing from the environment is copied
    into the recorded config); otherwise it becomes the default database's absolute URI.
    """
    if not configured and os.environ.get("MLFLOW_TRACKING_URI"):
        return ""
    uri = resolve_tracking_uri(configured)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + absolute(uri.removeprefix("sqlite:///"))
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return absolute(uri)
    return uri


def resolve_paths(cfg: PretrainConfig) -> None:
    """Make every path of the tree absolute before a run starts.

    A run may be launched from a process whose working directory is not the user's
    (a Ray Tune trial runs in its own trial directory), and its workers may run on other
    machines: from here on no path depends on where the process stands.
    """
    from workloads.checkpoint_loading import resolve_checkpoint

    cfg.run.output_dir = absolute(cfg.run.output_dir)
    for field in ("corpus", "val_corpus"):
        spec = getattr(cfg.data, field)
        if spec and spec != EMBEDDED_CORPUS:
            setattr(cfg.data, field, absolute(spec) if not glob.has_magic(spec) else
                    os.path.join(os.getcwd(), os.path.expanduser(spec)))
    cfg.data.dataset_dir = absolute(cfg.data.dataset_dir)
    cfg.tokenizer.model_path = absolute(cfg.tokenizer.model_path)
    cfg.tracking.uri = absolute_tracking_uri(cfg.tracking.uri)
    if cfg.run.branch_from:
        cfg.run.branch_from = str(resolve_checkpoint(absolute(cfg.run.branch_from)))


def resolve_dataset(cfg: PretrainConfig) -> Path:
    """A prepared dataset directory: given directly, or prepared now (a no-op when it exists)."""
    from orchestrator.prepare import prepare_dataset

    corpus = Path(cfg.data.corpus)
    if corpus.is_dir() and (corpus / MANIFEST_FILE).exists():
        return corpus.resolve()
    root = Path(cfg.data.dataset_dir) if cfg.data.dataset_dir else Path(cfg.run.output_dir) / "datasets"
    return prepare_dataset(cfg.data, cfg.tokenizer, root.resolve())


def check_branch(cfg: PretrainConfig, dataset_dir: Path) -> None:
    """A branch continues its origin's model on its origin's sample stream: both must be this run's."""
    from workloads.checkpoint_loading import read_description

    origin = Path(cfg.run.branch_from)
    description = read_description(origin)
    if description["model"] != dataclasses.asdict(cfg.model):
        raise UserInputError(f"run.branch_from: {origin} holds a model of another shape or kind than this run's model section")
    if Path(description["dataset_dir"]).resolve() != dataset_dir.resolve():
        raise UserInputError(f"run.branch_from: {origin} was trained on {description['dataset_dir']}, this run on {dataset_dir}")


def pretrain(cfg: PretrainConfig, tags: dict[str, str] | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Run (or resume) one pretrain job; returns the final reported metrics.

    `tags` go on its MLflow run; `callbacks` (Ray Train `UserCallback`s) are added to its trainer.
    """
    resolve_paths(cfg)

    def prepare() -> tuple[Path, dict[str, Any]]:
        dataset_dir = resolve_dataset(cfg)
        manifest = check_dataset(cfg, dataset_dir)
        if cfg.run.branch_from:
            check_branch(cfg, dataset_dir)
        return dataset_dir, manifest

    return train_on_ray(cfg, Launch(
        stage="pretrain",
        identity=cfg.training_identity(),
        global_batch=cfg.train.resolved_global_batch(cfg.data_parallel_degree()),
        prepare=prepare,
        shuffle_seed=cfg.data.shuffle_seed,
        tags=tags or {},
        allow_global_batch_change=cfg.run.allow_global_batch_change,
        callbacks=list(callbacks or []),
    ))


def main(argv: list[str] | None = None) -> None:
    pretrain(parse_cli(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
