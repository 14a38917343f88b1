"""`train.compile`: the training forward through `torch.compile`, or not.

Small models at these sizes spend much of a step on per-operator overhead (launches on a
GPU, dispatch on a CPU); `torch.compile` traces the model's forward and backward into
graphs whose element-wise work is fused (TorchInductor: Triton kernels on CUDA, C++ on
the CPU). The modes offered:

- `off`: eager, the default.
- `default`: TorchInductor's default mode.
- `max-autotune-no-cudagraphs`: it also benchmarks matrix-product kernels and picks the
  fastest (long compiles; worth it for long GPU runs).

The CUDA graph modes (`reduce-overhead`, `max-autotune`) are not offered: a CUDA graph
replay writes its outputs into the same memory every time, and the loop keeps tensors
the forward returns across micro-batches (the loss and the activation norms are summed
on the device and read once per step, train/loop.py), which a replay would overwrite.

Only the training forward is compiled (the loop's `train_step`): evaluation, greedy and
beam decoding with their key/value caches, the model checks and the gradient-quality
measure run the same module eagerly; it shares the compiled one's parameters. The
activation-norm hooks and the memory meter's saved-tensor hooks work under compile
(tests/test_compiling.py): the hooks are traced into the graph, and the bytes saved are
those the compiled graph saves. A batch of a new shape (seq2seq batches are padded to
their longest sentence) recompiles once, after which the lengths are dynamic.
"""

from __future__ import annotations

import torch
from torch import nn


def compiled(model: nn.Module, mode: str, backend: str = "inductor") -> nn.Module:
    """`model` as the training step calls it: itself (`off`), or compiled in `mode` (one
    of `config.schema.CompileMode`). `backend` is torch.compile's (the tests also trace
    with `aot_eager`, which compiles nothing to code)."""
    if mode == "off":
        return model
    return torch.compile(model, mode=mode, backend=backend)
