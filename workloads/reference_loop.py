"""Bare training loops without Ray or DeepSpeed: the references the bench and the sweep's estimate time.

`bare_loop` is the workers' loop on a prepared dataset (same model, weights, samples,
optimizer and schedule) in this process; `train_steps_on_device` trains a model on random
tokens on one device in bf16, for tokens/s, MFU and peak memory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from workloads.data.loader import PackedDataset
from workloads.data.order import global_batch_indices, split_micro_batches
from workloads.model import GPT, ModelConfig, training_flops_per_token
from workloads.parallel.blocks import compile_blocks
from workloads.parallel.engine import make_adamw, make_scheduler, param_groups
from workloads.perf import device_peak_flops, mfu
from workloads.train_config import TrainConfig


def bare_loop(
    model_cfg: ModelConfig,
    train: TrainConfig,
    dataset_dir: Path,
    steps: int,
    threads: int,
    *,
    compiled: bool = False,
    shuffle_seed: int = 0,
) -> list[float]:
    """The worker's training loop without Ray or DeepSpeed; returns the time after each step.

    Same model and initial weights, blocks compiled when `compiled` (a run's `parallel.compile_blocks`), same
    samples in the same order (`shuffle_seed`: the run's `data.shuffle_seed`), torch AdamW on the same param
    groups with the same schedule and gradient clipping, fp32.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(train.seed)
        model = GPT(model_cfg)
        if compiled:
            compile_blocks(model.blocks)
        optimizer = make_adamw(param_groups(model, train.weight_decay), train, on_gpu=False)
        scheduler = make_scheduler(optimizer, train)
        train_set = PackedDataset(dataset_dir, "train")
        global_batch = train.resolved_global_batch(1)
        stamps = [time.perf_counter()]
        for step in range(steps):
            indices = global_batch_indices(train_set.num_samples, global_batch, step, shuffle_seed)
            for micro in split_micro_batches(indices, train.micro_batch_size):
                tokens, segments = train_set.get(micro)
                loss = model(tokens[:, :-1], targets=tokens[:, 1:], segment_ids=segments[:, :-1])  # (B, T) each
                (loss / train.grad_accum_steps).backward()
                loss.item()
            if train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
        return stamps
    finally:
        torch.set_num_threads(previous_threads)


def steady_tokens_per_s(stamps: list[float], tokens_per_step: int, warmup: int) -> float:
    """Tokens/s from the end of step `warmup` to the end of the last step; stamps[k] = end of step k."""
    steps = len(stamps) - 1 - warmup
    if steps < 1:
        raise ValueError(f"need more than {warmup} steps, got {len(stamps) - 1}")
    return steps * tokens_per_step / (stamps[-1] - stamps[warmup])


def train_steps_on_device(
    model_cfg: ModelConfig, train: TrainConfig, seq_len: int, device: str, steps: int, warmup: int = 2
) -> dict[str, Any]:
    """A recipe's model trained on random tokens on one device in bf16 autocast (fp32 master weights, AdamW).

    Without segment ids, so attention is plain causal (flash kernels where available).
    Throughput counts the `steps` steps after `warmup` (at least 1) steps.
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"need warmup >= 1 and steps >= 1, got {warmup} and {steps}")
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(train.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_adamw(param_groups(model, train.weight_decay), train, on_gpu=on_gpu)
    batch = train.micro_batch_size
    tokens = torch.randint(0, model_cfg.vocab_size, (batch, seq_len + 1), device=device)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    stamps = []  # stamps[0]: end of warm-up; stamps[k]: end of measured step k
    for step in range(warmup + steps):
        for _ in range(train.grad_accum_steps):
            with torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=torch.bfloat16):
                loss = model(tokens[:, :-1], targets=tokens[:, 1:])  # (B, T) inputs and targets
            (loss / train.grad_accum_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup - 1:
            sync()
            stamps.append(time.perf_counter())
    tokens_per_s = steady_tokens_per_s(stamps, train.grad_accum_steps * batch * seq_len, warmup=0)
    flops_per_token = training_flops_per_token(model_cfg, seq_len)
    peak, peak_source = device_peak_flops(on_gpu, bf16=True)
    result = {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "micro_batch": f"{batch} x {seq_len} x {train.grad_accum_steps} accumulation",
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(flops_per_token, tokens_per_s, peak, 1),
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "final_loss": loss.item(),
    }
    if on_gpu:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del model, optimizer
    return result
