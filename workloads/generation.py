"""Sampling text from a `GPT`: batched prompts of different lengths, KV cache, stop at end of document.

Prompts are left-padded into one batch; padding takes no position and is never
attended to (`GPT.decode`), so every prompt of a batch gives exactly what it gives
alone. With the cache the prompts are run once (prefill) and then one token per
row per step; without it every step reruns the whole sequence (the reference the
cache is checked and benchmarked against). Generation stays inside the model's
context: prompt + new tokens <= `max_seq_len`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workloads.model import GPT, KVCache


@dataclass
class Sampling:
    """How the next token is chosen: temperature 0 is greedy; top_k keeps the k most likely
    tokens, top_p the smallest set whose probability reaches top_p (nucleus)."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generated:
    """New tokens per prompt (up to, not including, an end-of-document token)."""

    tokens: list[list[int]]
    stopped: list[bool]  # True where the row ended with end-of-document
    seconds: float
    steps: int  # decoding steps run (the longest row's new tokens)
    logits: torch.Tensor | None = None  # (B, steps, V) when asked for: the logits each step sampled from

    @property
    def new_tokens(self) -> int:
        return sum(len(row) for row in self.tokens)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def context_room(model: GPT, prompt_lengths: Sequence[int]) -> int:
    """How many new tokens fit after the longest prompt within the model's context."""
    return model.cfg.max_seq_len - max(prompt_lengths)


@torch.no_grad()
def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    keep_logits: bool = False,
) -> Generated:
    """Continue each prompt by up to `max_new_tokens` tokens (fewer where end-of-document comes first)."""
    sampling = sampling or Sampling()
    sampling.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    room = context_room(model, [len(p) for p in prompts])
    if max_new_tokens > room:
        raise ValueError(
            f"{max(map(len, prompts))} prompt tokens + {max_new_tokens} new tokens exceed the model's context of "
            f"{model.cfg.max_seq_len} tokens (at most {max(room, 0)} new tokens fit)"
        )
    device = next(model.parameters()).device
    batch, width = len(prompts), max(map(len, prompts))
    ids = torch.zeros(batch, width, dtype=torch.long)
    valid = torch.zeros(batch, width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):  # left padding: every row's last prompt token is in the last column
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        valid[row, width - len(prompt) :] = True
    ids, valid = ids.to(device), valid.to(device)

    was_training = model.training
    model.eval()  # no dropout while sampling
    started = time.perf_counter()
    new = torch.zeros(batch, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    step_logits = []
    try:
        if use_cache:
            cache = KVCache(model.cfg, batch, width + max_new_tokens, device, next(model.parameters()).dtype)
            logits = model.decode(ids, cache, valid)[:, -1]  # (B, V): prefill
        for step in range(max_new_tokens):
            if not use_cache:  # the whole sequence again, through a cache that lives for one step
                sequence = torch.cat((ids, new), dim=1)
                sequence_valid = torch.cat((valid, torch.ones_like(new, dtype=torch.bool)), dim=1)
                cache = KVCache(model.cfg, batch, sequence.shape[1], device, next(model.parameters()).dtype)
                logits = model.decode(sequence, cache, sequence_valid)[:, -1]
            if keep_logits:
                step_logits.append(logits.float().cpu())
            next_token = sample_next(logits, sampling, generator)  # (B,)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)  # finished rows only mark time
                finished |= next_token == eos_id
            new = torch.cat((new, next_token[:, None]), dim=1)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            if use_cache:
                logits = model.decode(next_token[:, None], cache)[:, -1]
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started

    tokens, stopped = [], []
    for row in new.tolist():
        end = row.index(eos_id) if eos_id is not None and eos_id in row else len(row)
        tokens.append(row[:end])
        stopped.append(end < len(row))
    logits_out = torch.stack(step_logits, dim=1) if keep_logits else None
    return Generated(tokens, stopped, seconds, new.shape[1], logits_out)


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row (B,) from its logits (B, V)."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth_best = torch.topk(logits, min(sampling.top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if sampling.top_p < 1.0:
        logits = nucleus_filter(logits, sampling.top_p)
    probs = F.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0].to(logits.device)


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask all but the most likely tokens whose total probability first reaches top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = F.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p,
    # so the most likely token always stays.
    drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))
