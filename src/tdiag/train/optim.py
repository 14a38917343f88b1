"""Optimizers and learning-rate schedules, each a named option chosen here once.

`noam` is the paper's schedule (Vaswani et al. 2017, eq. 3) with `lr` as its factor:
lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), so a longer warmup also means
a lower peak, exactly as in the paper's warmup ablations. `cosine` and `constant` use
`lr` as the peak rate, reached linearly over `warmup_steps`.

AdamW's decoupled weight decay (Loshchilov & Hutter 2019) applies to weight matrices
only: biases and LayerNorm gains are left undecayed, the usual rule (nanoGPT, GPT-3),
since shrinking a gain or an offset towards zero is no regulariser of the function's
complexity. SGD, momentum and Adam keep `weight_decay` as the L2 term torch gives them,
on every parameter.
"""

from __future__ import annotations

import math

import torch

from tdiag.config import TrainConfig


def decay_groups(params, weight_decay: float) -> list[dict]:
    """Two parameter groups: matrices (embeddings included) decayed, vectors not.

    Both groups exist even when one is empty or `weight_decay` is 0, so every AdamW
    optimizer state has the same layout and a checkpoint resumes into it.
    """
    params = list(params)
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


FUSED_DEVICES = ("cpu", "cuda")
"""Where torch's optimizers have a fused kernel: one call updates every parameter."""


def fused(params: list[torch.Tensor]) -> bool:
    """Whether `params` can take the fused update: floating point, on a device that has it.

    torch picks the fused kernel by default nowhere, and on the CPU not even the foreach
    one, so each parameter otherwise costs a handful of operator calls per step: for the
    copy task's 94-tensor model, one thread, Adam's step took 7.4 ms for-loop, 4.7 ms
    foreach and 1.2 ms fused (benchmarks/RESULTS.md, "Per-step work outside the model").
    """
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    kernel = {"fused": True} if fused(params) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kernel)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                **kernel)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            decay_groups(params, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kernel
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_multiplier(cfg: TrainConfig, step: int, d_model: int, total_steps: int | None = None) -> float:
    """Multiplier of `lr` for optimizer step `step` (1-based) of `total_steps` (default max_steps)."""
    step = max(step, 1)
    warmup = cfg.warmup_steps
    if cfg.schedule == "noam":
        return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
    if warmup and step < warmup:
        return step / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max((total_steps or cfg.max_steps) - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, d_model: int, total_steps: int | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR calls the lambda with the number of scheduler.step() calls so far (0 at
    # construction); the +1 makes the first optimizer step use the step-1 rate.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: lr_multiplier(cfg, done + 1, d_model, total_steps)
    )
