"""The pretrain stage's driver: its config tree, its dataset prepared (or found) and checked, then Ray Train.

The same command runs on a laptop (a local Ray, the embedded default corpus) and on a GPU cluster
(`ray job submit -- python -m orchestrator.pretrain --config gpt-350m-gpu ...`). The workers run
`workloads.loop.train_worker` with `workloads.stages.pretrain.PretrainStage`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.parser import RECIPE_DIR
from orchestrator.config.sections import RunConfig, ScalingConfig, TrackingConfig, absolute, dataset_root
from orchestrator.config.tree import ConfigTree
from orchestrator.data.checks import check_dataset
from orchestrator.data.pretraining import prepare_dataset
from orchestrator.launch.tracking import absolute_tracking_uri
from orchestrator.stages.base import DRIVER_ONLY, StageDriver
from workloads.checkpoints.loading import read_description, resolve_checkpoint
from workloads.data.config import EMBEDDED_CORPUS, DataConfig
from workloads.data.shards import MANIFEST_FILE
from workloads.errors import UserInputError
from workloads.hf_interop import hf_tokenizer_path, read_hf_model_config
from workloads.model import ModelConfig
from workloads.parallel.config import ParallelConfig
from workloads.parallel.engine import DeepSpeedConfig
from workloads.tokenizer import TokenizerConfig
from workloads.train_config import CADENCE_FIELDS, TrainConfig


@dataclass
class PretrainConfig(ConfigTree):
    """The whole tree of a pretrain run."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = dataclasses.field(default_factory=DeepSpeedConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    scaling: ScalingConfig = dataclasses.field(default_factory=ScalingConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)

    def check(self) -> None:
        self.parallel.check_layout(self.scaling.num_workers, self.deepspeed.zero_stage, self.model.n_layers)
        if self.data.seq_len > self.model.max_seq_len:
            raise UserInputError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        self.train.resolved_global_batch(self.data_parallel_degree())

    def data_parallel_degree(self) -> int:
        return self.scaling.num_workers // self.parallel.pipeline_stages


def resolve_model_source(cfg: PretrainConfig) -> None:
    """With `model.init_from=hf:DIR`, the model's shape and the tokenizer come from DIR.

    The shape fields of the recipe give way to the checkpoint's config.json; how the
    model is trained (attention_mask, dropout) stays as configured. The directory is
    made absolute, since workers may run elsewhere.
    """
    if not cfg.model.init_from.startswith("hf:"):
        return

    hf_dir = Path(cfg.model.init_from.removeprefix("hf:")).resolve()
    imported = read_hf_model_config(hf_dir)
    cfg.model = dataclasses.replace(
        imported, init_from=f"hf:{hf_dir}", attention_mask=cfg.model.attention_mask, dropout=cfg.model.dropout
    )
    cfg.tokenizer.model_path = str(hf_tokenizer_path(hf_dir))


def resolve_paths(cfg: PretrainConfig) -> None:
    """Make every path of the tree absolute before a run starts.

    A run may be launched from a process whose working directory is not the user's
    (a Ray Tune trial runs in its own trial directory), and its workers may run on other
    machines: from here on no path depends on where the process stands.
    """
    cfg.run.output_dir = absolute(cfg.run.output_dir)
    for field in ("corpus", "val_corpus"):
        spec = getattr(cfg.data, field)
        if spec and spec != EMBEDDED_CORPUS:
            setattr(
                cfg.data,
                field,
                absolute(spec) if not glob.has_magic(spec) else os.path.join(os.getcwd(), os.path.expanduser(spec)),
            )
    cfg.data.dataset_dir = absolute(cfg.data.dataset_dir)
    cfg.tokenizer.model_path = absolute(cfg.tokenizer.model_path)
    cfg.tracking.uri = absolute_tracking_uri(cfg.tracking.uri)
    if cfg.run.branch_from:
        cfg.run.branch_from = str(resolve_checkpoint(absolute(cfg.run.branch_from)))


def resolve_dataset(cfg: PretrainConfig) -> Path:
    """A prepared dataset directory: given directly, or prepared now (a no-op when it exists)."""
    corpus = Path(cfg.data.corpus)
    if corpus.is_dir() and (corpus / MANIFEST_FILE).exists():
        return corpus.resolve()
    return prepare_dataset(cfg.data, cfg.tokenizer, dataset_root(cfg.run.output_dir, cfg.data.dataset_dir))


def check_branch(cfg: PretrainConfig, dataset_dir: Path) -> None:
    """A branch continues its origin's model on its origin's sample stream: both must be this run's."""
    origin = Path(cfg.run.branch_from)
    description = read_description(origin)
    if description["model"] != dataclasses.asdict(cfg.model):
        raise UserInputError(
            f"run.branch_from: {origin} holds a model of another shape or kind than this run's model section"
        )
    if Path(description["dataset_dir"]).resolve() != dataset_dir.resolve():
        raise UserInputError(
            f"run.branch_from: {origin} was trained on {description['dataset_dir']}, this run on {dataset_dir}"
        )


class PretrainDriver(StageDriver):
    name = "pretrain"
    summary = "Pretrain a GPT with DeepSpeed on Ray Train; prepares the corpus first when needed."
    tree = PretrainConfig
    default_recipe = "default"
    # Cadence (logging, evaluation, checkpoints, halting), resources and the split of the global batch into
    # micro-batches may change between submissions of one run (the global batch is checked on its own, in
    # launch.run_state.claim). Activation checkpointing and compiled blocks compute the same numbers.
    identity_excluded = {
        **DRIVER_ONLY,
        "data": {"dataset_dir"},
        "train": CADENCE_FIELDS,
        "parallel": {"activation_checkpointing", "compile_blocks"},
    }

    @property
    def recipe_dir(self) -> Path:
        return RECIPE_DIR  # pretrain's recipes are the top-level ones

    def resolve(self, cfg: PretrainConfig) -> None:
        resolve_model_source(cfg)

    def begin(self, cfg: PretrainConfig, parent_run_id: str) -> dict[str, str]:
        resolve_paths(cfg)
        return super().begin(cfg, parent_run_id)

    def identity_extra(self, cfg: PretrainConfig) -> dict[str, Any]:
        # A branch continues another run's curve: its origin is part of it.
        return {"branch_from": cfg.run.branch_from} if cfg.run.branch_from else {}

    def global_batch(self, cfg: PretrainConfig) -> int:
        return cfg.train.resolved_global_batch(cfg.data_parallel_degree())

    def prepare_data(self, cfg: PretrainConfig, tags: dict[str, str]) -> tuple[Path, dict[str, Any]]:
        dataset_dir = resolve_dataset(cfg)
        manifest = check_dataset(dataset_dir, cfg.data, cfg.tokenizer, cfg.model)
        if cfg.run.branch_from:
            check_branch(cfg, dataset_dir)
        return dataset_dir, manifest


PRETRAIN = PretrainDriver()
