"""Turning a plain model into a DeepSpeed engine: the `deepspeed.` section and its use.

The model never sees DeepSpeed; this module builds the DeepSpeed config from the
`train.` and `deepspeed.` sections, the AdamW optimizer (torch's own, so nothing is
JIT-compiled on CPU; fused on GPU) and the learning-rate schedule, and calls
`deepspeed.initialize` inside the worker as Ray's DeepSpeed guide prescribes.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from workloads.errors import UserInputError
from workloads.lr_schedule import lr_multiplier
from workloads.schema import option
from workloads.train_config import TrainConfig

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed engine: ZeRO stage, precision and raw overrides."""

    zero_stage: int = option(
        1, "ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+gradients), 3 (+parameters)"
    )
    precision: str = option("auto", "auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 (autocast, fp32 master weights)")
    extra: dict = option({}, "raw DeepSpeed config entries merged over the generated config (for experts)")

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise UserInputError(f"deepspeed.zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            raise UserInputError(f"deepspeed.precision: '{self.precision}' is not one of {', '.join(PRECISIONS)}")

    def uses_bf16(self, on_gpu: bool) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and on_gpu)


def deepspeed_config(
    ds: DeepSpeedConfig, train: TrainConfig, data_parallel: int, on_gpu: bool, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The DeepSpeed config: generated entries, then the user's `deepspeed.extra`, then `overrides`."""
    config: dict[str, Any] = {
        "train_batch_size": train.resolved_global_batch(data_parallel),
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        # bf16 autocast around fp32 weights: the fp32 copies are the master weights, so
        # optimizer updates never round to bf16 (DeepSpeed's "bf16" mode would keep bf16 weights).
        "torch_autocast": {"enabled": ds.uses_bf16(on_gpu), "dtype": "bfloat16"},
        # Progress lines come from our own loop; DeepSpeed's would repeat them per rank.
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    merged = copy.deepcopy(config)
    _deep_update(merged, ds.extra)
    _deep_update(merged, overrides or {})
    return merged


def _deep_update(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (linear and embedding weights) only; norm gains stay undecayed."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_adamw(params, train: TrainConfig, on_gpu: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, fused=on_gpu or None)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_multiplier, cfg=train))


def import_deepspeed():
    """`import deepspeed` without two import-time costs of features this project never uses.

    Deferred to the workers (importing DeepSpeed is slow and the driver never needs it). DeepSpeed's
    autotuner imports MLflow (1-1.5 s) to log autotuning experiments, which run from DeepSpeed's own
    launcher, never inside a training worker; it does without when MLflow is missing. ZeRO's
    optimizer check imports DeepSpeed's Muon optimizer, whose kernels are wrapped in torch.compile
    at import, which loads inductor (about 1.4 s); our optimizer is torch's AdamW, so those
    kernels never run and are imported with TorchDynamo switched off (plain functions) instead.
    Both only shorten a worker's start: a process that already imported MLflow keeps it for
    DeepSpeed, and nothing compiled by the stage (`parallel.compile_blocks`) is affected.
    """
    if "deepspeed" not in sys.modules and "mlflow" not in sys.modules:
        sys.modules["mlflow"] = None  # makes `import mlflow` raise ImportError
        try:
            importlib.import_module("deepspeed")
        finally:
            if sys.modules.get("mlflow", "") is None:
                del sys.modules["mlflow"]
    muon = "deepspeed.runtime.zero.muon.muon_optimizer"
    if muon not in sys.modules:
        previous = os.environ.get("TORCHDYNAMO_DISABLE")
        os.environ["TORCHDYNAMO_DISABLE"] = "1"
        try:
            importlib.import_module(muon)
        except ImportError:  # an older DeepSpeed without Muon
            pass
        finally:
            if previous is None:
                del os.environ["TORCHDYNAMO_DISABLE"]
            else:
                os.environ["TORCHDYNAMO_DISABLE"] = previous
    return importlib.import_module("deepspeed")


def build_engine(
    model: torch.nn.Module,
    ds: DeepSpeedConfig,
    train: TrainConfig,
    data_parallel: int,
    on_gpu: bool,
    overrides: dict[str, Any] | None = None,
):
    """`deepspeed.initialize` with our optimizer and schedule; returns the engine."""
    engine, _, _, _ = import_deepspeed().initialize(
        model=model,
        model_parameters=param_groups(model, train.weight_decay),
        optimizer=partial(make_adamw, train=train, on_gpu=on_gpu),
        lr_scheduler=partial(make_scheduler, train=train),
        config=deepspeed_config(ds, train, data_parallel, on_gpu, overrides),
    )
    return engine
