"""Activation checkpointing of Transformer blocks (`model.checkpointing: blocks`).

A checkpointed block keeps only its inputs for backward and runs its forward again
there (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"). The layer
module itself is called, unwrapped, so state-dict keys and forward hooks (activation
norms) are the same with or without it; hooks fire again in the recompute.

torch's non-reentrant checkpoint restores the RNG state before the recompute
(`preserve_rng_state`, on by default), so dropout draws the same masks twice and the
gradients equal those of the plain forward (tests/test_checkpointing.py).
"""

from __future__ import annotations

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
