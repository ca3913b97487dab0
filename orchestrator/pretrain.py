"""`python -m orchestrator.pretrain`: prepare data if needed, then DeepSpeed training on Ray Train.

The same command runs on a laptop (it starts a local Ray and trains on the
embedded default corpus) and on a GPU cluster (`ray job submit -- python -m
orchestrator.pretrain --config gpt-350m-gpu ...`). The driver only builds configs
and launches; the training itself is `workloads.loop.train_worker` running
`workloads.stages.pretrain.PretrainStage`.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from orchestrator.config import parse_tree, run_cli
from orchestrator.dataset_checks import check_dataset
from orchestrator.launch import Launch, train_on_ray
from orchestrator.pretrain_config import PretrainConfig
from workloads.data.shards import MANIFEST_FILE

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


def resolve_dataset(cfg: PretrainConfig) -> Path:
    """A prepared dataset directory: given directly, or prepared now (a no-op when it exists)."""
    from orchestrator.prepare import prepare_dataset

    corpus = Path(cfg.data.corpus)
    if corpus.is_dir() and (corpus / MANIFEST_FILE).exists():
        return corpus.resolve()
    root = Path(cfg.data.dataset_dir) if cfg.data.dataset_dir else Path(cfg.run.output_dir) / "datasets"
    return prepare_dataset(cfg.data, cfg.tokenizer, root.resolve())


def pretrain(cfg: PretrainConfig, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Run (or resume) one pretrain job; returns the final reported metrics. `tags` go on its MLflow run."""

    def prepare() -> tuple[Path, dict[str, Any]]:
        dataset_dir = resolve_dataset(cfg)
        return dataset_dir, check_dataset(cfg, dataset_dir)

    return train_on_ray(cfg, Launch(
        stage="pretrain",
        identity=cfg.training_identity(),
        global_batch=cfg.train.resolved_global_batch(cfg.data_parallel_degree()),
        prepare=prepare,
        shuffle_seed=cfg.data.shuffle_seed,
        tags=tags or {},
        allow_global_batch_change=cfg.run.allow_global_batch_change,
    ))


def main(argv: list[str] | None = None) -> None:
    pretrain(parse_cli(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
