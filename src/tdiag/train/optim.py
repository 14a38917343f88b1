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
from tdiag.train.fused_optimizer import FusedOptimizer


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
"""Where torch has fused optimizer kernels: one call updates every parameter."""


def fused(params: list[torch.Tensor]) -> bool:
    """Whether `params` can take the fused update: floating point, on a device that has it.

    torch picks the fused kernel by default nowhere, and on the CPU not even the foreach
    one, so each parameter otherwise costs a handful of operator calls per step: for the
    copy task's 94-tensor model, one thread, Adam's step took 7.4 ms for-loop, 4.7 ms
    foreach and 1.2 ms fused (benchmarks/RESULTS.md, "Per-step work outside the model").
    """
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def build_optimizer(params, cfg: TrainConfig):
    """The run's optimizer: a `FusedOptimizer` (torch's fused kernels, without importing
    torch._dynamo; train/fused_optimizer.py), or torch.optim's own class for parameters
    the fused kernels do not take."""
    params = list(params)
    if cfg.optimizer == "adamw":
        groups = [{**g, "betas": cfg.betas, "eps": cfg.eps} for g in decay_groups(params, cfg.weight_decay)]
    elif cfg.optimizer == "adam":
        groups = [{"params": params, "betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}]
    elif cfg.optimizer in ("sgd", "momentum"):
        momentum = cfg.momentum if cfg.optimizer == "momentum" else 0.0
        groups = [{"params": params, "momentum": momentum, "weight_decay": cfg.weight_decay}]
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
    groups = [{**g, "lr": cfg.lr} for g in groups]
    kind = "sgd" if cfg.optimizer == "momentum" else cfg.optimizer
    if fused(params):
        return FusedOptimizer(kind, groups)
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](groups)


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


class Schedule:
    """Sets each parameter group's `lr` to its base rate x `lr_multiplier` of the next
    optimizer step: call `step()` after each optimizer step.

    torch's LambdaLR does the same, but it accepts only a torch.optim.Optimizer. The
    state has LambdaLR's keys (`base_lrs`, `last_epoch`: scheduler steps taken), so a
    checkpoint written with LambdaLR resumes here.
    """

    def __init__(self, optimizer, cfg: TrainConfig, d_model: int, total_steps: int | None = None):
        self.optimizer = optimizer
        self._multiplier = lambda step: lr_multiplier(cfg, step, d_model, total_steps)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        multiplier = self._multiplier(self.last_epoch + 1)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * multiplier

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, saved: dict) -> None:
        self.base_lrs = [float(lr) for lr in saved["base_lrs"]]
        self.last_epoch = int(saved["last_epoch"])
        self._apply()


def build_scheduler(optimizer, cfg: TrainConfig, d_model: int, total_steps: int | None = None) -> Schedule:
    """The run's learning-rate schedule over `optimizer` (the first step's rate is set at once)."""
    return Schedule(optimizer, cfg, d_model, total_steps)
