"""Any checkpoint this project writes, loaded as a plain `GPT` with its tokenizer and config.

A checkpoint describes itself: next to DeepSpeed's files the chief writes
`model.json` (the model config, the tokenizer's digest, the dataset and the
evaluation settings it was trained with) and the tokenizer model itself. So a
path is all that loading needs: a checkpoint directory, the `best_checkpoint`
link, or a run directory (its latest checkpoint registered by Ray Train).

Loading reads the files directly, without Ray and without starting DeepSpeed's
engine: whole-model states for ZeRO 0-2, per-layer files for pipeline layouts,
and ZeRO-3's partitioned fp32 weights consolidated by DeepSpeed's own
`zero_to_fp32`. Every file is read with `weights_only` loading; the few
non-tensor objects DeepSpeed stores are allowed by name (`_DEEPSPEED_GLOBALS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workloads.errors import UserInputError
from workloads.model import GPT, ModelConfig, ScalarHeadModel, pipeline_layer_prefix
from workloads.tokenizer import Tokenizer

DESCRIPTION_FILE = "model.json"
TOKENIZER_FILE = "tokenizer.model"
DESCRIPTION_FORMAT = 1
# Written by workloads.checkpoints.saving (kept here as a name, so that loading never imports Ray).
MARKER_FILE = "training_state.json"
# Ray Train's record of the checkpoints it registered, in its storage directory (`<run>/train`).
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
RUN_STATE_FILE = "run.json"
TRAIN_STORAGE = "train"


LANGUAGE_MODEL = "language_model"  # a GPT
SCALAR_HEAD = "scalar_head"  # a ScalarHeadModel: GPT backbone + one number per sequence (reward model)


def describe_checkpoint(
    model: ModelConfig,
    tokenizer: Tokenizer,
    dataset_dir: str,
    train: Any,
    stage: str = "pretrain",
    kind: str = LANGUAGE_MODEL,
    weights_prefix: str = "",
) -> dict[str, bytes]:
    """The files that make a checkpoint self-describing: {file name: content}.

    `weights_prefix`: the trained module holds more than this model (an RL learner's policy and
    critic), and the model's weights are those under this prefix of its state dict.
    """
    description = {
        "format": DESCRIPTION_FORMAT,
        "stage": stage,
        "kind": kind,
        "model": dataclasses.asdict(model),
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size},
        "dataset_dir": str(dataset_dir),
        # What `orchestrator.evaluate --dataset` needs to repeat training's own evaluation.
        "evaluation": {"eval_samples": train.eval_samples, "micro_batch_size": train.micro_batch_size},
    }
    if weights_prefix:
        description["weights_prefix"] = weights_prefix
    return {DESCRIPTION_FILE: json.dumps(description, indent=2).encode(), TOKENIZER_FILE: tokenizer.model_bytes}


@dataclass
class LoadedModel:
    model: GPT | ScalarHeadModel  # in eval mode, on the requested device (a ScalarHeadModel for reward models)
    tokenizer: Tokenizer
    config: ModelConfig
    checkpoint: Path  # the checkpoint directory the weights came from
    step: int
    description: dict[str, Any]
    mlflow_run_id: str = ""  # the MLflow run of the training run, when its run directory says
    tracking_uri: str = ""
    run_dir: Path | None = None


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory that `path` names (a checkpoint, the best link, a run directory)."""
    given = Path(path)
    if not given.exists():
        raise UserInputError(f"{path}: no such checkpoint or run directory")
    if (given / MARKER_FILE).is_file():
        return given.resolve()
    for storage in (given / TRAIN_STORAGE, given):
        snapshot = storage / RAY_SNAPSHOT_FILE
        if snapshot.is_file():
            try:
                latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
            except ValueError as e:
                raise UserInputError(f"{snapshot}: unreadable Ray Train checkpoint record ({e})") from e
            if not latest:
                raise UserInputError(f"{given}: the run has no registered checkpoint yet")
            return resolve_checkpoint(storage / latest["checkpoint_dir_name"])
    raise UserInputError(
        f"{path}: not a checkpoint (no {MARKER_FILE}) nor a run directory (no {TRAIN_STORAGE}/{RAY_SNAPSHOT_FILE})"
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    checkpoint = resolve_checkpoint(path)
    description = read_description(checkpoint)
    config = ModelConfig(**description["model"])
    tokenizer = Tokenizer.load(checkpoint / description["tokenizer"]["file"])
    if tokenizer.sha256 != description["tokenizer"]["sha256"]:
        raise UserInputError(
            f"{checkpoint / TOKENIZER_FILE}: sha256 differs from {DESCRIPTION_FILE}'s; the checkpoint is damaged"
        )
    state = json.loads((checkpoint / MARKER_FILE).read_text())
    weights = own_weights(read_weights(checkpoint, state, config, device), description)
    model = ScalarHeadModel(GPT(config)) if description.get("kind") == SCALAR_HEAD else GPT(config)
    load_weights_into(model, weights, checkpoint)
    model.to(device).eval()
    loaded = LoadedModel(model, tokenizer, config, checkpoint, int(state["step"]), description)
    run_dir = _owning_run_dir(checkpoint)
    if run_dir is not None:
        run_state = json.loads((run_dir / RUN_STATE_FILE).read_text())
        loaded.run_dir = run_dir
        loaded.mlflow_run_id = run_state.get("mlflow_run_id", "")
        loaded.tracking_uri = run_state.get("tracking_uri", "")
    return loaded


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load every weight of `model`; only a tied output head may be absent (it is the token embedding)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied_head = [name for name in missing if name.endswith("lm_head.weight")]
    if unexpected or set(missing) - set(tied_head) or (tied_head and not model.cfg.tie_embeddings):
        raise UserInputError(
            f"{source}: weights do not fit the model in {DESCRIPTION_FILE} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def read_language_model_weights(path: str | Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT's weights from a checkpoint of a language model (to start another stage from), on CPU."""
    checkpoint = resolve_checkpoint(path)
    description = read_description(checkpoint)
    if description.get("kind", LANGUAGE_MODEL) != LANGUAGE_MODEL:
        raise UserInputError(f"{checkpoint}: holds a {description['kind']}, not a language model to start from")
    state = json.loads((checkpoint / MARKER_FILE).read_text())
    return own_weights(read_weights(checkpoint, state, config, "cpu"), description)


def own_weights(weights: dict[str, torch.Tensor], description: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The described model's weights among a checkpoint's (those under its `weights_prefix`, renamed)."""
    prefix = description.get("weights_prefix", "")
    if not prefix:
        return weights
    return {name.removeprefix(prefix): tensor for name, tensor in weights.items() if name.startswith(prefix)}


def read_description(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / DESCRIPTION_FILE
    if not path.is_file():
        raise UserInputError(
            f"{checkpoint}: no {DESCRIPTION_FILE}; written by an older version, it cannot be loaded on its own"
        )
    try:
        description = json.loads(path.read_text())
    except ValueError as e:
        raise UserInputError(f"{path}: not valid JSON ({e})") from e
    if description.get("format") != DESCRIPTION_FORMAT:
        raise UserInputError(f"{path}: format {description.get('format')!r}, this code reads {DESCRIPTION_FORMAT}")
    return description


def _owning_run_dir(checkpoint: Path) -> Path | None:
    """`<run>` for `<run>/train/checkpoint_*` and `<run>/best/step*`."""
    for parent in checkpoint.parents[:2]:
        if (parent / RUN_STATE_FILE).is_file():
            return parent
    return None


# ---------------------------------------------------------------------------
# DeepSpeed's files, read with weights_only loading
# ---------------------------------------------------------------------------


def _deepspeed_globals() -> list:
    """The non-tensor objects DeepSpeed (0.19) pickles into its checkpoint files: ZeRO's
    partitioning enums and the config's dataclass-like records. Nothing else is allowed."""
    # deepspeed: its classes are allowed by name in weights_only loading; loading a checkpoint as a plain
    # model needs no DeepSpeed otherwise
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


@contextlib.contextmanager
def weights_only_loading():
    """Make every `torch.load` inside use `weights_only=True` with DeepSpeed's few globals allowed.

    DeepSpeed's `zero_to_fp32` passes `weights_only=False`; its files need no arbitrary
    code, so the consolidation runs with the safe loader instead.
    """
    original = torch.load

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with torch.serialization.safe_globals(_deepspeed_globals()):
        torch.load = safe_load
        try:
            yield
        finally:
            torch.load = original


def _load(path: Path, device) -> dict[str, Any]:
    with torch.serialization.safe_globals(_deepspeed_globals()):
        return torch.load(path, map_location=device, weights_only=True)


def read_weights(checkpoint: Path, state: dict[str, Any], config: ModelConfig, device) -> dict[str, torch.Tensor]:
    """GPT's state dict (fp32) from any layout: ZeRO 0-3, any worker count, pipeline stages."""
    tag = f"step{int(state['step']):08d}"
    files = checkpoint / tag
    if not files.is_dir():
        raise UserInputError(f"{checkpoint}: no DeepSpeed checkpoint {tag}")
    if state["pipeline_stages"] > 1:
        return _pipeline_weights(files, config, device)
    if state["zero_stage"] == 3:
        # deepspeed: only ZeRO-3 shards need DeepSpeed's consolidation
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with weights_only_loading(), contextlib.redirect_stdout(None):
            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=tag)
    return {
        name: tensor.float() for name, tensor in _load(files / "mp_rank_00_model_states.pt", device)["module"].items()
    }


def _pipeline_weights(files: Path, config: ModelConfig, device) -> dict[str, torch.Tensor]:
    """Pipeline layers are saved one file per layer (`layer_NN-model_states.pt`), in model order."""
    weights = {}
    for path in sorted(files.glob("layer_*-model_states.pt")):
        index = int(path.name.split("-")[0].removeprefix("layer_"))
        prefix = pipeline_layer_prefix(config, index)
        if prefix is None:
            continue  # the last stage's copy of a tied embedding: the first stage's is the weight
        weights.update({prefix + name: tensor.float() for name, tensor in _load(path, device).items()})
    return weights
