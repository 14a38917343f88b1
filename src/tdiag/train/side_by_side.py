"""What activation checkpointing costs in time, timed side by side in one process.

Two runs' step times come from two jobs, which in a pipeline ran at different moments
beside different neighbours on a shared machine: their difference can be the
neighbours'. (The smoke lab once timed the checkpointed step 14% faster than the plain
one from two such jobs.) So a run that checkpoints its blocks also times, after
training, its model's forward and backward with and without checkpointing, alternating
on the same batches, and its summary records both medians (`side_by_side`). The
optimizer update, the same either way, is left out; so is any compiling (the eager
model is timed).
"""

from __future__ import annotations

import statistics
import time
from contextlib import AbstractContextManager
from typing import Callable

import torch

from tdiag.models.checkpointing import checkpointing_as
from tdiag.train.workload import Workload

PAIRS = 10
"""Timed (checkpointed, plain) pairs, after `WARMUP` untimed ones."""
WARMUP = 2


def applies(arch: str, checkpointing: str) -> bool:
    """A run whose model checkpoints its blocks (the project's Transformers)."""
    return checkpointing == "blocks" and arch in ("gpt", "encoder_decoder")


def checkpointing_times(model: torch.nn.Module, workload: Workload, seed: int, label_smoothing: float,
                        device: torch.device, autocast: Callable[[], AbstractContextManager],
                        pairs: int = PAIRS) -> dict:
    """Median seconds of one training step's forward and backward with checkpointing
    (`checkpointed_seconds`) and without (`plain_seconds`), over `pairs` alternating pairs
    on the run's first batches (which of the two goes first alternates too). Gradients
    are cleared after each pass; the weights are not changed."""
    times: dict[bool, list[float]] = {True: [], False: []}
    model.train()
    for i in range(WARMUP + pairs):
        batch = workload.train_batch(i % workload.steps_per_epoch + 1, seed)
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            with checkpointing_as(model, on):
                began = time.perf_counter()
                for micro in batch.micro:
                    with autocast():
                        loss = workload.loss(model, micro, batch.n_tokens, label_smoothing)
                    loss.backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                took = time.perf_counter() - began
            model.zero_grad(set_to_none=True)
            if i >= WARMUP:
                times[on].append(took)
    return {"checkpointed_seconds": statistics.median(times[True]),
            "plain_seconds": statistics.median(times[False]), "pairs": pairs}
