"""Activation checkpointing of Transformer blocks (`model.checkpointing: blocks`).

A checkpointed block keeps only its inputs for backward and runs its forward again
there (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"). The layer
module itself is called, unwrapped, so state-dict keys and forward hooks (activation
norms) are the same with or without it; torch's recompute runs the layer's forward
without its hooks, so a norm is captured once a step either way.

torch's non-reentrant checkpoint restores the RNG state before the recompute
(`preserve_rng_state`, on by default), so dropout draws the same masks twice and the
gradients equal those of the plain forward (tests/test_checkpointing.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(layer: nn.Module, checkpointed: bool, *args):
    """`layer(*args)`, checkpointed when `checkpointed` and the layer is training with
    grad enabled; evaluation, decoding (the caller passes False with a cache) and
    no-grad passes run it plainly, as there is no backward to save memory for."""
    if checkpointed and layer.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


@contextlib.contextmanager
def checkpointing_as(model: nn.Module, on: bool):
    """Within the block, every layer stack of `model` that runs its layers through
    `run_block` (a module with a boolean `checkpointing`) checkpoints them or not, as
    `on` says; each stack's own setting is restored after."""
    stacks = [m for m in model.modules() if isinstance(getattr(m, "checkpointing", None), bool)]
    before = [m.checkpointing for m in stacks]
    try:
        for m in stacks:
            m.checkpointing = on
        yield len(stacks)
    finally:
        for m, setting in zip(stacks, before):
            m.checkpointing = setting
