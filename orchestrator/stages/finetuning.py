"""The fine-tuning stages' driver: `orchestrator.sft`, `orchestrator.reward` and `orchestrator.dpo`.

Each stage is a config tree (recipes in `orchestrator/config/recipes/<stage>/`, dotted
overrides, `--help`, `--print-config`), starts from `model.init_from` (a checkpoint
or run directory of this project, an MLflow run id, or `hf:DIR`, resolved here before
any worker starts; the model's shape and tokenizer come from it), prepares its data
once (`orchestrator.data.finetuning`), and trains through the same launch as pretraining
(`orchestrator.launch.trainer`). Afterwards it samples held-out prompts with the KV-cache
generator (or, for the reward model, scores held-out pairs) and logs them to MLflow as
a table; on the built-in task it also measures the property's rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.parser import RECIPE_DIR, parse_tree
from orchestrator.config.sections import RunConfig, ScalingConfig, TrackingConfig, dataset_root
from orchestrator.data.finetuning import (
    BUILTIN,
    StageDataConfig,
    check_stage_dataset,
    prepare_stage_dataset,
)
from orchestrator.launch.trainer import Launch, train_on_ray
from orchestrator.stages.heldout import SampleConfig, log_samples
from orchestrator.stages.starting_model import lineage_tags, starting_model, take_model_from_start
from workloads.errors import UserInputError
from workloads.model import ModelConfig
from workloads.parallel.config import ParallelConfig
from workloads.parallel.engine import DeepSpeedConfig
from workloads.stages.datasets import MANIFEST_FILE
from workloads.stages.dpo import DPOConfig
from workloads.tokenizer import Tokenizer
from workloads.train_config import CADENCE_FIELDS, TrainConfig

SUMMARIES = {
    "sft": "Supervised fine-tuning on prompt/response records (loss on response tokens only), DeepSpeed on Ray Train.",
    "reward": "Train a reward model (backbone + scalar head) on ranked responses with the Bradley-Terry loss.",
    "dpo": "Direct preference optimisation of a policy against a frozen reference on preference pairs.",
}


@dataclass
class StageConfig:
    """The whole tree of a fine-tuning stage."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: StageDataConfig = dataclasses.field(default_factory=StageDataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = dataclasses.field(default_factory=DeepSpeedConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    scaling: ScalingConfig = dataclasses.field(default_factory=ScalingConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    samples: SampleConfig = dataclasses.field(default_factory=SampleConfig)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            if section.name != "parallel":
                getattr(self, section.name).validate()
        if self.parallel.pipeline_stages != 1:
            raise UserInputError(
                f"parallel.pipeline_stages={self.parallel.pipeline_stages}: pipeline parallelism is "
                "pretrain-only (DeepSpeed's pipeline engine fixes its loss when it is built)"
            )
        self.parallel.validate(self.scaling.num_workers, self.deepspeed.zero_stage, self.model.n_layers)
        if self.data.seq_len > self.model.max_seq_len:
            raise UserInputError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        self.train.resolved_global_batch(self.scaling.num_workers)

    def stage_options(self) -> dict[str, Any]:
        return {}


@dataclass
class DPOStageConfig(StageConfig):
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)

    def stage_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.dpo)


TREES = {"sft": StageConfig, "reward": StageConfig, "dpo": DPOStageConfig}


def resolve_stage_model(cfg: StageConfig) -> None:
    """Take the model's shape from the starting checkpoint; refuse a shape field set to something else."""
    take_model_from_start(cfg)
    if not cfg.data.seq_len:
        cfg.data.seq_len = cfg.model.max_seq_len


def parse_stage_cli(stage: str, argv: list[str] | None) -> StageConfig:
    return parse_tree(
        TREES[stage],
        argv,
        f"orchestrator.{stage}",
        SUMMARIES[stage],
        default_recipe="tiny",
        resolve=resolve_stage_model,
        recipe_dir=RECIPE_DIR / stage,
    )


# ---------------------------------------------------------------------------
# Running a stage
# ---------------------------------------------------------------------------


def stage_identity(stage: str, cfg: StageConfig) -> str:
    """Hash of what determines the stage's result: its sections (not cadence or resources) and its inputs."""
    identity = {
        "stage": stage,
        "model": dataclasses.asdict(cfg.model),  # init_from names the exact starting checkpoint
        "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "dataset_dir"},
        "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in CADENCE_FIELDS},
        "deepspeed": dataclasses.asdict(cfg.deepspeed),
        "options": cfg.stage_options(),
    }
    for name in ("train_file", "val_file"):  # the records' contents, not just their names
        path = getattr(cfg.data, name)
        if path and path != BUILTIN and Path(path).is_file():
            identity[f"{name}_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def run_stage(stage: str, cfg: StageConfig, parent_run_id: str = "") -> dict[str, Any]:
    """Run (or resume) one fine-tuning stage; returns the final metrics (and `checkpoint`)."""
    _, tokenizer_file = starting_model(cfg.model.init_from)
    tokenizer = Tokenizer.load(tokenizer_file)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise UserInputError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's ({tokenizer.vocab_size})"
        )

    def prepare() -> tuple[Path, dict[str, Any]]:
        given = Path(cfg.data.train_file)
        if given.is_dir() and (given / MANIFEST_FILE).is_file():  # an already prepared dataset
            dataset_dir = given.resolve()
        else:
            dataset_dir = prepare_stage_dataset(
                stage, cfg.data, tokenizer, cfg.data.seq_len, dataset_root(cfg.run.output_dir, cfg.data.dataset_dir)
            )
        manifest = check_stage_dataset(dataset_dir, stage, tokenizer)
        tags["orchestrator.dataset_hash"] = manifest["dataset_hash"]
        return dataset_dir, manifest

    tags = lineage_tags(cfg, tokenizer, parent_run_id)
    return train_on_ray(
        cfg,
        Launch(
            stage=stage,
            identity=stage_identity(stage, cfg),
            global_batch=cfg.train.resolved_global_batch(cfg.scaling.num_workers),
            prepare=prepare,
            shuffle_seed=cfg.data.shuffle_seed,
            options=cfg.stage_options(),
            tags=tags,
            after_training=lambda final, recorder: log_samples(stage, cfg, final["checkpoint"], recorder),
            allow_global_batch_change=cfg.run.allow_global_batch_change,
        ),
    )
