"""Training stages: each supplies data, model, loss and metrics to the one loop (`workloads.loop`)."""

from __future__ import annotations

import importlib

import torch

from workloads.stages.base import Stage, WorkerPlan

# stage name -> "module:class"; imported on demand so a worker loads only its own stage.
STAGES = {
    "pretrain": "workloads.stages.pretrain:PretrainStage",
    "sft": "workloads.stages.sft:SFTStage",
    "reward": "workloads.stages.reward:RewardStage",
    "dpo": "workloads.stages.dpo:DPOStage",
}


def make_stage(plan: WorkerPlan, device: torch.device, on_gpu: bool) -> Stage:
    module, name = STAGES[plan.stage].split(":")
    return getattr(importlib.import_module(module), name)(plan, device, on_gpu)
