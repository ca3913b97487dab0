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
import time
from pathlib import Path
from typing import Any

from orchestrator import best_checkpoint, ray_runtime, run_state
from orchestrator.config import parse_tree, run_cli, to_dict
from orchestrator.dataset_checks import check_dataset
from orchestrator.pretrain_config import PretrainConfig
from orchestrator.tracking import RunRecorder, resolve_tracking_uri
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


def worker_runtime_env(cfg: PretrainConfig) -> dict[str, Any]:
    # Plain prints: Train's print-to-logger patch doubles every line once a library wraps stdout.
    env: dict[str, str] = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if not cfg.scaling.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would otherwise probe for accelerators and warn
    if cfg.scaling.nccl_preset:
        from orchestrator.fabric import load_nccl_preset

        env.update(load_nccl_preset(cfg.scaling.nccl_preset))
    return {"env_vars": env}


def build_trainer(cfg: PretrainConfig, payload: dict[str, Any], run_dir: Path):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.train_callbacks import BestCheckpointKeeper
    from workloads.loop import train_worker

    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_worker,
        train_loop_config=payload,
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_state.TRAIN_STORAGE,
            storage_path=str(run_dir),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            # Ray deletes a checkpoint only after a newer one is registered, so one always survives.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints or None),
            callbacks=[BestCheckpointKeeper(run_dir)] if cfg.train.keep_best_checkpoint else [],
            worker_runtime_env=worker_runtime_env(cfg),
        ),
    )


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) one pretrain job; returns the final reported metrics."""
    launched = time.perf_counter()
    run_dir = cfg.run.run_dir()
    global_batch = cfg.train.resolved_global_batch(cfg.data_parallel_degree())
    identity = cfg.training_identity()
    previous = run_state.claim(run_dir, identity, global_batch, cfg.run.fresh, cfg.run.allow_global_batch_change)
    if cfg.scaling.nccl_preset:
        worker_runtime_env(cfg)  # a bad preset name fails here, before anything starts

    print(f"pretrain: {ray_runtime.connect()}", flush=True)
    dataset_dir = resolve_dataset(cfg)
    manifest = check_dataset(cfg, dataset_dir)

    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    state = run_state.RunState(identity, global_batch, previous.mlflow_run_id if previous else "", tracking_uri)
    run_state.save(run_dir, state)

    def remember_run_id(run_id: str) -> None:
        state.mlflow_run_id = run_id
        run_state.save(run_dir, state)

    recorder = RunRecorder(
        tracking_uri, cfg.tracking.experiment, cfg.run.name, state.mlflow_run_id,
        tags={"orchestrator.stage": "pretrain", "orchestrator.identity": identity, "orchestrator.run_dir": str(run_dir)},
        config=to_dict(cfg), dataset_dir=dataset_dir, manifest=manifest, run_dir=run_dir, on_run_opened=remember_run_id,
    )
    recorder.start()
    print(f"pretrain: run '{cfg.run.name}' in {run_dir} | MLflow run {recorder.run_id or '(pending)'} at {tracking_uri}")

    payload = {
        "stage": "pretrain",
        **{name: dataclasses.asdict(getattr(cfg, name)) for name in ("model", "train", "deepspeed", "parallel")},
        "shuffle_seed": cfg.data.shuffle_seed,
        "options": {},
        "dataset_dir": str(dataset_dir),
        "run_dir": str(run_dir),
        "threads_per_worker": max(1, int(cfg.scaling.cpus_per_worker)),
    }
    trainer = build_trainer(cfg, payload, run_dir)
    try:
        result = trainer.fit()
    except Exception:
        recorder.finish({}, 0, {}, "FAILED", timeout=cfg.tracking.flush_timeout_s)
        raise
    final = dict(result.metrics or {})
    tags = {}
    if result.checkpoint is not None:
        final["checkpoint"] = tags["orchestrator.final_checkpoint"] = result.checkpoint.path
    best = best_checkpoint.read_best(run_dir) if cfg.train.keep_best_checkpoint else None
    if best is not None:
        tags["orchestrator.best_checkpoint"] = str(run_dir / best_checkpoint.BEST_LINK)
        tags["orchestrator.best_checkpoint_step"] = str(best["step"])
    final_eval = {f"final/{k.removeprefix('eval/')}": v for k, v in final.items() if k.startswith("eval/")}
    halted = cfg.train.halt_at_step and final.get("step", 0) < cfg.train.max_steps
    recorder.finish(
        {**final_eval, "run/wall_s": time.perf_counter() - launched}, int(final.get("step", 0)), tags,
        "KILLED" if halted else "FINISHED", timeout=cfg.tracking.flush_timeout_s,
    )
    if "eval/bpb" in final:
        print(
            f"pretrain: done at step {final.get('step')} | final validation loss {final['eval/loss']:.4f} | "
            f"bits per byte {final['eval/bpb']:.4f} | checkpoint {final.get('checkpoint')}"
        )
    else:
        print(f"pretrain: stopped at step {final.get('step')} | checkpoint {final.get('checkpoint')} (resubmit to continue)")
    if best is not None:
        print(f"pretrain: best checkpoint: step {best['step']}, validation loss {best['eval_loss']:.4f} "
              f"| {run_dir / best_checkpoint.BEST_LINK}")
    return final


def main(argv: list[str] | None = None) -> None:
    pretrain(parse_cli(argv))


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
