"""Writing a checkpoint in formats other tools read, atomically, and registering it in MLflow.

The command is `python -m orchestrator.export`; the formats are `workloads.hf_interop`.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import safetensors
import sentencepiece
import torch

from orchestrator.launch.tracking import resolve_tracking_uri
from workloads.checkpoints.loading import LoadedModel
from workloads.errors import UserInputError
from workloads.hf_interop import save_hf, save_safetensors

FORMATS = {"hf": save_hf, "safetensors": save_safetensors}
EXPORT_EXPERIMENT = "export"  # where a checkpoint without an MLflow run of its own is registered from
MODEL_ARTIFACT = "model"


def say(message: str) -> None:
    print(f"export: {message}", flush=True)


def refuse_occupied(out: Path) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserInputError(f"--out: {out} already exists and is not an empty directory; nothing was written")


def write_then_rename(out: Path, write) -> None:
    """Run write(tmp) on a fresh directory beside `out`, then rename it to `out` (an absent or empty directory)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        refuse_occupied(out)  # filled by someone else meanwhile: keep theirs
        tmp.replace(out)  # rename(2): atomic, and replaces an empty directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register(export_dir: Path, name: str, loaded: LoadedModel, tracking_uri: str) -> None:
    """Log `export_dir` to the checkpoint's MLflow run (transformers flavor) as a new version of model `name`."""
    # mlflow: only --register records anything
    import mlflow
    import mlflow.transformers
    import transformers  # transformers (the optional [hf] extra) and mlflow: only --register needs them

    uri = tracking_uri or loaded.tracking_uri or resolve_tracking_uri("")
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run = training_run(client, loaded, uri)
    new_run = run is None
    if new_run:
        experiment = client.get_experiment_by_name(EXPORT_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPORT_EXPERIMENT)
        tags = {"orchestrator.checkpoint": str(loaded.checkpoint)}
        if loaded.mlflow_run_id:
            tags["orchestrator.training_run_id"] = loaded.mlflow_run_id
        run = client.create_run(experiment_id, run_name=f"export-{name}", tags=tags)
        say(f"logging to new run {run.info.run_id} in experiment {EXPORT_EXPERIMENT!r}")
    run_id = run.info.run_id
    mlflow.set_experiment(experiment_id=run.info.experiment_id)  # the logged model goes to the run's experiment
    # A pipeline object, not the directory's path: MLflow 3.17's path mode fails on transformers 5
    # ("'str' object has no attribute '__name__'"). MLflow saves it with save_pretrained.
    pipeline = transformers.pipeline(
        "text-generation",
        model=transformers.AutoModelForCausalLM.from_pretrained(export_dir),
        tokenizer=transformers.AutoTokenizer.from_pretrained(export_dir),
    )
    try:
        info = mlflow.transformers.log_model(
            pipeline,
            name=MODEL_ARTIFACT,
            registered_model_name=name,
            run_id=run_id,  # passed through to mlflow.models.Model.log: logs without reopening a finished run
            pip_requirements=pip_requirements(),
            metadata={
                "checkpoint": str(loaded.checkpoint),
                "step": loaded.step,
                "tokenizer_sha256": loaded.tokenizer.sha256,
            },
        )
    finally:
        if new_run:
            client.set_terminated(run_id)
    version = info.registered_model_version
    say(f"registered models:/{name}/{version} (logged model {info.model_id}, run {run_id}) at {uri}")


def training_run(client, loaded: LoadedModel, uri: str):
    """The MLflow run that trained the checkpoint, or None: the checkpoint names none, or it is
    not in this tracking store (registering into another registry than training used)."""
    import mlflow  # mlflow: as in register

    if not loaded.mlflow_run_id:
        return None
    try:
        return client.get_run(loaded.mlflow_run_id)
    except mlflow.exceptions.MlflowException:
        say(f"the checkpoint's training run {loaded.mlflow_run_id} is not in {uri}")
        return None


def pip_requirements() -> list[str]:
    """What loading the pipeline needs, pinned to what exported it. Given explicitly: MLflow would
    otherwise load the model in a subprocess to infer them, which is slow."""
    # transformers and google.protobuf: the optional [hf] extra, as in register
    import google.protobuf
    import transformers

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
        f"safetensors=={safetensors.__version__}",
        f"sentencepiece=={sentencepiece.__version__}",  # AutoTokenizer converts tokenizer.model with these two
        f"protobuf=={google.protobuf.__version__}",
    ]
