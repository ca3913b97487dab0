"""The fine-tuning stages' driver: `orchestrator.sft`, `orchestrator.reward` and `orchestrator.dpo`.

Each stage is a config tree (recipes in `orchestrator/recipes/<stage>/`, dotted
overrides, `--help`, `--print-config`), starts from `model.init_from` (a checkpoint
or run directory of this project, an MLflow run id, or `hf:DIR`, resolved here before
any worker starts; the model's shape and tokenizer come from it), prepares its data
once (`orchestrator.stage_data`), and trains through the same launch as pretraining
(`orchestrator.launch`). Afterwards it samples held-out prompts with the KV-cache
generator (or, for the reward model, scores held-out pairs) and logs them to MLflow as
a table; on the built-in task it also measures the property's rate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import RECIPE_DIR, parse_tree, run_cli
from orchestrator.launch import Launch, train_on_ray
from orchestrator.pretrain_config import RunConfig, ScalingConfig, TrackingConfig
from orchestrator.stage_data import BUILTIN, StageDataConfig, builtin_files, check_stage_dataset, prepare_stage_dataset
from orchestrator.tracking import resolve_tracking_uri
from workloads.checkpoint_loading import RUN_STATE_FILE, read_description, resolve_checkpoint
from workloads.engine import DeepSpeedConfig
from workloads.errors import UserInputError
from workloads.model import ModelConfig
from workloads.pipeline import ParallelConfig
from workloads.schema import option
from workloads.stages.datasets import MANIFEST_FILE
from workloads.stages.dpo import DPOConfig
from workloads.tokenizer import Tokenizer
from workloads.train_config import CADENCE_FIELDS, TrainConfig

# Fields that fix the model's shape: they come from the starting checkpoint.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "mlp", "ffn_hidden",
                "norm", "position", "rope_theta", "norm_eps", "tie_embeddings")
MLFLOW_RUN_ID = re.compile(r"[0-9a-f]{32}")
SUMMARIES = {
    "sft": "Supervised fine-tuning on prompt/response records (loss on response tokens only) with DeepSpeed on Ray Train.",
    "reward": "Train a reward model (backbone + scalar head) on ranked responses with the Bradley-Terry loss.",
    "dpo": "Direct preference optimisation of a policy against a frozen reference on preference pairs.",
}


@dataclass
class SampleConfig:
    """Generations on held-out prompts after training, logged to MLflow as a table (and the built-in task's property rate)."""

    prompts: int = option(200, "held-out prompts to sample (the reward model scores as many held-out pairs)")
    max_new_tokens: int = option(24, "new tokens per prompt (capped to the context)")
    # 1.0 samples the model's own distribution: a lower temperature would sharpen it and move the
    # property's measured rate towards 0 or 1 whatever the training did.
    temperature: float = option(1.0, "sampling temperature; 0 = greedy")
    top_k: int = option(0, "keep the k most likely tokens; 0 = off")
    seed: int = option(0, "sampling seed")

    def validate(self) -> None:
        if self.prompts < 0 or self.max_new_tokens < 1 or self.temperature < 0:
            raise UserInputError("samples: prompts >= 0, max_new_tokens >= 1 and temperature >= 0 are required")


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
            raise UserInputError(f"parallel.pipeline_stages={self.parallel.pipeline_stages}: pipeline parallelism is "
                                 "pretrain-only (DeepSpeed's pipeline engine fixes its loss when it is built)")
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


# ---------------------------------------------------------------------------
# The starting model
# ---------------------------------------------------------------------------

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
        from mlflow.tracking import MlflowClient

        uri = resolve_tracking_uri(tracking_uri)
        try:
            run = MlflowClient(uri).get_run(value)
        except Exception as e:  # noqa: BLE001 - any failure to find it is the user's to fix
            raise UserInputError(f"model.init_from: MLflow run {value} not found at {uri} ({str(e).splitlines()[0]})") from None
        checkpoint = run.data.tags.get("orchestrator.final_checkpoint")
        if not checkpoint:
            raise UserInputError(f"model.init_from: MLflow run {value} has no final checkpoint (unfinished?)")
        return f"checkpoint:{resolve_checkpoint(checkpoint)}"
    raise UserInputError(f"model.init_from: {value!r} is no checkpoint or run directory, MLflow run id or hf:DIR")


def starting_model(init_from: str) -> tuple[ModelConfig, Path]:
    """The starting model's config and its tokenizer file."""
    if init_from.startswith("hf:"):
        from workloads.hf_interop import hf_tokenizer_path, read_hf_model_config

        directory = init_from.removeprefix("hf:")
        return read_hf_model_config(directory), hf_tokenizer_path(directory)
    checkpoint = Path(init_from.removeprefix("checkpoint:"))
    description = read_description(checkpoint)
    if description.get("kind", "language_model") != "language_model":
        raise UserInputError(f"model.init_from: {checkpoint} holds a {description['kind']}, not a language model")
    return ModelConfig(**description["model"]), checkpoint / description["tokenizer"]["file"]


def resolve_stage_model(cfg: StageConfig) -> None:
    """Take the model's shape from the starting checkpoint; refuse a shape field set to something else."""
    take_model_from_start(cfg)
    if not cfg.data.seq_len:
        cfg.data.seq_len = cfg.model.max_seq_len


def take_model_from_start(cfg: StageConfig) -> Path:
    """cfg.model becomes the starting checkpoint's (init_from resolved; a shape field set to something
    else refused); returns the checkpoint's tokenizer file."""
    cfg.model.init_from = resolve_init_from(cfg.model.init_from, cfg.tracking.uri)
    start, tokenizer_file = starting_model(cfg.model.init_from)
    defaults = ModelConfig()
    for name in SHAPE_FIELDS:
        given, theirs = getattr(cfg.model, name), getattr(start, name)
        if given != getattr(defaults, name) and given != theirs:
            raise UserInputError(f"model.{name}={given!r} disagrees with the starting checkpoint's {theirs!r} "
                                 f"({cfg.model.init_from}); the model's shape comes from the checkpoint")
    cfg.model = dataclasses.replace(start, init_from=cfg.model.init_from, dropout=cfg.model.dropout)
    return tokenizer_file


def parse_stage_cli(stage: str, argv: list[str] | None) -> StageConfig:
    return parse_tree(TREES[stage], argv, f"orchestrator.{stage}", SUMMARIES[stage], default_recipe="tiny",
                      resolve=resolve_stage_model, recipe_dir=RECIPE_DIR / stage)


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


def dataset_root(cfg: StageConfig) -> Path:
    return (Path(cfg.data.dataset_dir) if cfg.data.dataset_dir else Path(cfg.run.output_dir) / "datasets").resolve()


def lineage_tags(cfg: StageConfig, tokenizer: Tokenizer, parent_run_id: str) -> dict[str, str]:
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


def run_stage(stage: str, cfg: StageConfig, parent_run_id: str = "") -> dict[str, Any]:
    """Run (or resume) one fine-tuning stage; returns the final metrics (and `checkpoint`)."""
    _, tokenizer_file = starting_model(cfg.model.init_from)
    tokenizer = Tokenizer.load(tokenizer_file)
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise UserInputError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's ({tokenizer.vocab_size})")

    def prepare() -> tuple[Path, dict[str, Any]]:
        given = Path(cfg.data.train_file)
        if given.is_dir() and (given / MANIFEST_FILE).is_file():  # an already prepared dataset
            dataset_dir = given.resolve()
        else:
            dataset_dir = prepare_stage_dataset(stage, cfg.data, tokenizer, cfg.data.seq_len, dataset_root(cfg))
        manifest = check_stage_dataset(dataset_dir, stage, tokenizer)
        tags["orchestrator.dataset_hash"] = manifest["dataset_hash"]
        return dataset_dir, manifest

    tags = lineage_tags(cfg, tokenizer, parent_run_id)
    return train_on_ray(cfg, Launch(
        stage=stage,
        identity=stage_identity(stage, cfg),
        global_batch=cfg.train.resolved_global_batch(cfg.scaling.num_workers),
        prepare=prepare,
        shuffle_seed=cfg.data.shuffle_seed,
        options=cfg.stage_options(),
        tags=tags,
        after_training=lambda final, recorder: log_samples(stage, cfg, final["checkpoint"], recorder),
        allow_global_batch_change=cfg.run.allow_global_batch_change,
    ))


def heldout_records(cfg: StageConfig) -> list[dict[str, str]]:
    """Held-out prompts (with their chosen and rejected responses where known), at most `samples.prompts`."""
    if cfg.data.train_file == BUILTIN:
        path = builtin_files(dataset_root(cfg))["heldout"]
    elif cfg.data.val_file:
        path = Path(cfg.data.val_file)
    else:
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if isinstance(row.get("prompt"), str)][: cfg.samples.prompts]


def log_samples(stage: str, cfg: StageConfig, checkpoint: str, recorder) -> dict[str, float]:
    """Sample (or score) held-out prompts with the final weights; log a table; return task metrics."""
    from workloads.task import has_property

    records = heldout_records(cfg)
    if not records:
        return {}
    if stage == "reward":
        table, metrics = score_heldout_pairs(checkpoint, records)
    else:
        responses = sample_responses(checkpoint, [r["prompt"] for r in records], cfg.samples)
        table = {"prompt": [r["prompt"] for r in records], "response": responses}
        metrics = {}
        if cfg.data.train_file == BUILTIN:
            table["has_property"] = [has_property(r) for r in responses]
            metrics["task/property_rate"] = sum(table["has_property"]) / len(responses)
            print(f"{stage}: built-in task: {100 * metrics['task/property_rate']:.1f}% of {len(responses)} held-out "
                  "responses have the property (written as a comment)")
    if recorder.run_id:
        recorder.client.log_table(recorder.run_id, data=table, artifact_file="generations.json")
    return metrics


def sample_responses(checkpoint: str, prompts: list[str], samples: SampleConfig) -> list[str]:
    """The KV-cache generator's responses to `prompts` (fixed seed), each prompt opening a document."""
    from workloads.checkpoint_loading import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    _, out = sample_prompts(loaded, prompts, samples)
    return [loaded.tokenizer.decode(ids) for ids in out.tokens]


def sample_prompts(loaded, prompts: list[str], samples: SampleConfig):
    """(encoded prompts, `Generated`) of a loaded checkpoint answering `prompts` with the sample settings:
    each prompt opens a document and is cut from the left to leave the context room; fixed seed."""
    import torch

    from workloads.generation import Sampling, generate

    tokenizer = loaded.tokenizer
    encoded = [[tokenizer.eos_id, *tokenizer.encode(p)][-(loaded.config.max_seq_len - 1):] for p in prompts]
    room = loaded.config.max_seq_len - max(map(len, encoded))
    out = generate(loaded.model, encoded, min(samples.max_new_tokens, room),
                   Sampling(samples.temperature, samples.top_k), eos_id=tokenizer.eos_id,
                   generator=torch.Generator().manual_seed(samples.seed))
    return encoded, out


def score_heldout_pairs(checkpoint: str, records: list[dict[str, str]]) -> tuple[dict[str, list], dict[str, float]]:
    from orchestrator.score_rewards import score

    pairs = [r for r in records if isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)]
    chosen = score(checkpoint, [(r["prompt"], r["chosen"]) for r in pairs])
    rejected = score(checkpoint, [(r["prompt"], r["rejected"]) for r in pairs])
    table = {"prompt": [r["prompt"] for r in pairs], "chosen": [r["chosen"] for r in pairs],
             "rejected": [r["rejected"] for r in pairs], "reward_chosen": chosen, "reward_rejected": rejected}
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / max(len(pairs), 1)
    print(f"reward: held-out prompts: the chosen response scores higher in {100 * accuracy:.1f}% of {len(pairs)} pairs")
    return table, {"task/heldout_accuracy": accuracy}


def main(stage: str, argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(stage, parse_stage_cli(stage, argv))


def entry_point(stage: str) -> None:
    run_cli(lambda argv: main(stage, argv), sys.argv[1:])

