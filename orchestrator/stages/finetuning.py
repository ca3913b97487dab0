"""The fine-tuning stages' shared tree and driver: SFT, the reward model and DPO (`sft`, `reward`, `dpo`).

Each starts from `model.init_from` (a checkpoint or run directory of this project, an MLflow run id, or
`hf:DIR`, resolved before any worker starts; the model's shape and tokenizer come from it,
`orchestrator.stages.starting_model`), prepares its data once (`orchestrator.data.finetuning`), trains
through the same launch as pretraining, and afterwards samples held-out prompts with the KV-cache
generator (or, for the reward model, scores held-out pairs), logged to MLflow as a table
(`orchestrator.stages.heldout`). Recipes are in `orchestrator/config/recipes/<stage>/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.sections import RunConfig, ScalingConfig, TrackingConfig, dataset_root
from orchestrator.config.tree import EVERY_FIELD, ConfigTree
from orchestrator.data.finetuning import BUILTIN, StageDataConfig, check_stage_dataset, prepare_stage_dataset
from orchestrator.stages.base import DRIVER_ONLY, StageDriver
from orchestrator.stages.heldout import SampleConfig, log_samples
from orchestrator.stages.starting_model import lineage_tags, starting_tokenizer, take_model_from_start
from workloads.errors import UserInputError
from workloads.model import ModelConfig
from workloads.parallel.config import ParallelConfig
from workloads.parallel.engine import DeepSpeedConfig
from workloads.stages.datasets import MANIFEST_FILE
from workloads.train_config import CADENCE_FIELDS, TrainConfig


@dataclass
class StageConfig(ConfigTree):
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

    def check(self) -> None:
        if self.parallel.pipeline_stages != 1:
            raise UserInputError(
                f"parallel.pipeline_stages={self.parallel.pipeline_stages}: pipeline parallelism is "
                "pretrain-only (DeepSpeed's pipeline engine fixes its loss when it is built)"
            )
        self.parallel.check_layout(self.scaling.num_workers, self.deepspeed.zero_stage, self.model.n_layers)
        if self.data.seq_len > self.model.max_seq_len:
            raise UserInputError(f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        self.train.resolved_global_batch(self.scaling.num_workers)


class FinetuneDriver(StageDriver):
    """SFT, the reward model and DPO: a starting model, records prepared into a dataset, held-out samples after."""

    tree = StageConfig
    # The samples drawn after training, and the parallel section (no pipelines here; checkpointing and
    # compile change no number), do not change what is trained.
    identity_excluded = {
        **DRIVER_ONLY,
        "samples": EVERY_FIELD,
        "parallel": EVERY_FIELD,
        "data": {"dataset_dir"},
        "train": CADENCE_FIELDS,
    }

    def resolve(self, cfg: StageConfig) -> None:
        """The model's shape from the starting checkpoint (a shape field set to something else refused)."""
        take_model_from_start(cfg)
        if not cfg.data.seq_len:
            cfg.data.seq_len = cfg.model.max_seq_len

    def begin(self, cfg: StageConfig, parent_run_id: str) -> dict[str, str]:
        return lineage_tags(cfg, starting_tokenizer(cfg), parent_run_id)

    def identity_extra(self, cfg: StageConfig) -> dict[str, Any]:
        extra: dict[str, Any] = {"stage": self.name}
        for name in ("train_file", "val_file"):  # the records' contents, not just their names
            path = getattr(cfg.data, name)
            if path and path != BUILTIN and Path(path).is_file():
                extra[f"{name}_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return extra

    def prepare_data(self, cfg: StageConfig, tags: dict[str, str]) -> tuple[Path, dict[str, Any]]:
        tokenizer = starting_tokenizer(cfg)
        given = Path(cfg.data.train_file)
        if given.is_dir() and (given / MANIFEST_FILE).is_file():  # an already prepared dataset
            dataset_dir = given.resolve()
        else:
            root = dataset_root(cfg.run.output_dir, cfg.data.dataset_dir)
            dataset_dir = prepare_stage_dataset(self.workers_run, cfg.data, tokenizer, cfg.data.seq_len, root)
        manifest = check_stage_dataset(dataset_dir, self.workers_run, tokenizer)
        tags["orchestrator.dataset_hash"] = manifest["dataset_hash"]
        return dataset_dir, manifest

    def after_training(
        self, cfg: StageConfig, final: dict[str, Any], recorder: Any, roles: dict[str, Any]
    ) -> dict[str, float]:
        return log_samples(self.workers_run, cfg, final["checkpoint"], recorder)
