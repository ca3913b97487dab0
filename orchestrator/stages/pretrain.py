"""The pretrain stage's driver: its config tree, then prepare data if needed and train on Ray Train.

The same command runs on a laptop (it starts a local Ray and trains on the
embedded default corpus) and on a GPU cluster (`ray job submit -- python -m
orchestrator.pretrain --config gpt-350m-gpu ...`). The driver only builds configs
and launches; the training itself is `workloads.loop.train_worker` running
`workloads.stages.pretrain.PretrainStage`.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.parser import parse_tree
from orchestrator.config.sections import RunConfig, ScalingConfig, TrackingConfig, absolute
from orchestrator.data.checks import check_dataset
from orchestrator.data.pretraining import prepare_dataset
from orchestrator.launch.tracking import absolute_tracking_uri
from orchestrator.launch.trainer import Launch, train_on_ray
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
class PretrainConfig:
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

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            if section.name != "parallel":
                getattr(self, section.name).validate()
        self.parallel.validate(self.scaling.num_workers, self.deepspeed.zero_stage, self.model.n_layers)
        if self.data.seq_len > self.model.max_seq_len:
            raise UserInputError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        self.train.resolved_global_batch(self.data_parallel_degree())

    def data_parallel_degree(self) -> int:
        return self.scaling.num_workers // self.parallel.pipeline_stages

    def training_identity(self) -> str:
        """Hash of what determines the loss curve; a run directory keeps one identity.

        Cadence fields (logging, eval, checkpoints, halting), resources and the split of
        the global batch into micro-batches may change between submissions of the same run.
        """
        # The batch shape is checked on its own (run_state.claim): the global batch must stay the
        # same unless allowed, while micro-batch x accumulation may change with the worker count.
        identity = {
            "model": dataclasses.asdict(self.model),
            "data": {k: v for k, v in dataclasses.asdict(self.data).items() if k != "dataset_dir"},
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "train": {k: v for k, v in dataclasses.asdict(self.train).items() if k not in CADENCE_FIELDS},
            "deepspeed": dataclasses.asdict(self.deepspeed),
            # Activation checkpointing and compiled blocks compute the same numbers: either may be switched on a resume.
            "parallel": {
                k: v
                for k, v in dataclasses.asdict(self.parallel).items()
                if k not in ("activation_checkpointing", "compile_blocks")
            },
        }
        if self.run.branch_from:  # a branch continues another run's curve: its origin is part of it
            identity["branch_from"] = self.run.branch_from
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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
    root = Path(cfg.data.dataset_dir) if cfg.data.dataset_dir else Path(cfg.run.output_dir) / "datasets"
    return prepare_dataset(cfg.data, cfg.tokenizer, root.resolve())


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


def pretrain(cfg: PretrainConfig, tags: dict[str, str] | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Run (or resume) one pretrain job; returns the final reported metrics.

    `tags` go on its MLflow run; `callbacks` (Ray Train `UserCallback`s) are added to its trainer.
    """
    resolve_paths(cfg)

    def prepare() -> tuple[Path, dict[str, Any]]:
        dataset_dir = resolve_dataset(cfg)
        manifest = check_dataset(dataset_dir, cfg.data, cfg.tokenizer, cfg.model)
        if cfg.run.branch_from:
            check_branch(cfg, dataset_dir)
        return dataset_dir, manifest

    return train_on_ray(
        cfg,
        Launch(
            stage="pretrain",
            identity=cfg.training_identity(),
            global_batch=cfg.train.resolved_global_batch(cfg.data_parallel_degree()),
            prepare=prepare,
            shuffle_seed=cfg.data.shuffle_seed,
            tags=tags or {},
            allow_global_batch_change=cfg.run.allow_global_batch_change,
            callbacks=list(callbacks or []),
        ),
    )
