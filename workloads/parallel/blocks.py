"""Transforms of a plain (non-pipeline) model's blocks, applied in this order: activation
checkpointing, then compile. Parameter names stay as they are, so state dicts and checkpoints
are the same with either on or off.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from workloads.model import GPT, Block


def checkpoint_blocks(model: GPT) -> GPT:
    """Recompute every block's activations in the backward pass; parameter names stay as they are.

    Replacing each block's `forward` (not wrapping the block in a new module) keeps the
    state dict, and so checkpoints, identical with and without activation checkpointing.
    """
    for block in model.blocks:
        block.forward = partial(_checkpointed_forward, block)
    return model


def _checkpointed_forward(block: Block, *args) -> torch.Tensor:
    # A frame of our own around `checkpoint`: torch.compile traces only frames outside torch,
    # so a block whose forward was `partial(checkpoint, ...)` silently ran eagerly when compiled.
    # From this frame dynamo captures the checkpoint as a recompute region of the block's graph.
    return checkpoint(type(block).forward, block, *args, use_reentrant=False)


def compile_blocks(blocks: Iterable[nn.Module]) -> None:
    """Compile each block in place with `torch.compile`; parameter names stay as they are.

    `Module.compile()` compiles the module's call instead of wrapping the module (as
    `torch.compile(module)` does, adding `_orig_mod.` to every name), so state dicts and
    checkpoints are the same compiled or not. Apply after `checkpoint_blocks`, so that
    the compiled graph holds the recompute.
    """
    for block in blocks:
        block.compile()
