"""Optimizer choice and learning-rate schedules, as multipliers of the peak lr."""

from __future__ import annotations

import math

import pytest
import torch

from tdiag.config import TrainConfig
from tdiag.train.optim import build_optimizer, build_scheduler, lr_multiplier


def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    "name, cls, momentum",
    [("sgd", torch.optim.SGD, 0.0), ("momentum", torch.optim.SGD, 0.9), ("adam", torch.optim.Adam, None),
     ("adamw", torch.optim.AdamW, None)],
)
def test_optimizer_names_build_the_right_class(name, cls, momentum):
    cfg = TrainConfig(optimizer=name, lr=0.02, weight_decay=0.01, betas=(0.8, 0.95), eps=1e-7)
    opt = build_optimizer(_params(), cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.01
    if momentum is not None:
        assert group["momentum"] == momentum
    else:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-7


def test_noam_peaks_at_one_at_warmup():
    cfg = TrainConfig(schedule="noam", warmup_steps=200, max_steps=2000)
    assert lr_multiplier(cfg, 200) == 1.0
    values = [lr_multiplier(cfg, s) for s in range(1, 2001)]
    assert max(values) == 1.0 and values.index(1.0) == 199


@pytest.mark.parametrize("step", [1, 2, 50, 199, 200, 201, 800, 2000, 10_000])
def test_noam_follows_vaswani(step):
    w, d = 200, 64
    cfg = TrainConfig(schedule="noam", warmup_steps=w)
    assert lr_multiplier(cfg, step) == pytest.approx(min(step / w, math.sqrt(w / step)), rel=1e-12)

    # Vaswani et al. 2017, eq. 3, divided by its value at step == warmup
    def eq3(s):
        return d**-0.5 * min(s**-0.5, s * w**-1.5)

    assert lr_multiplier(cfg, step) == pytest.approx(eq3(step) / eq3(w), rel=1e-12)


def test_cosine_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(schedule="cosine", warmup_steps=100, max_steps=1000, min_lr_ratio=0.1)
    for s in (1, 25, 99):
        assert lr_multiplier(cfg, s) == pytest.approx(s / 100, rel=1e-12)
    assert lr_multiplier(cfg, 100) == pytest.approx(1.0, rel=1e-12)
    assert lr_multiplier(cfg, 550) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-12)  # halfway through the decay
    assert lr_multiplier(cfg, 1000) == pytest.approx(0.1, rel=1e-12)
    assert lr_multiplier(cfg, 5000) == pytest.approx(0.1, rel=1e-12)
    decay = [lr_multiplier(cfg, s) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_cosine_without_warmup_starts_at_peak():
    cfg = TrainConfig(schedule="cosine", warmup_steps=0, max_steps=10, min_lr_ratio=0.0)
    assert lr_multiplier(cfg, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_multiplier(cfg, 10) == pytest.approx(0.0, abs=1e-15)


def test_constant_ramps_then_stays_at_one():
    cfg = TrainConfig(schedule="constant", warmup_steps=50, max_steps=500)
    for s in (1, 10, 49):
        assert lr_multiplier(cfg, s) == pytest.approx(s / 50, rel=1e-12)
    assert all(lr_multiplier(cfg, s) == 1.0 for s in range(50, 600))
    no_warmup = TrainConfig(schedule="constant", warmup_steps=0)
    assert all(lr_multiplier(no_warmup, s) == 1.0 for s in range(1, 20))


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(schedule="noam", warmup_steps=10, lr=0.5),
        TrainConfig(schedule="cosine", warmup_steps=5, max_steps=25, min_lr_ratio=0.2, lr=0.1),
        TrainConfig(schedule="constant", warmup_steps=4, lr=0.3),
    ],
    ids=["noam", "cosine", "constant"],
)
def test_scheduler_gives_optimizer_step_k_the_step_k_rate(cfg):
    opt = build_optimizer(_params(), cfg)
    sched = build_scheduler(opt, cfg)
    # before the first scheduler.step(): the rate of optimizer step 1
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_multiplier(cfg, 1), rel=1e-12)
    for k in range(1, 31):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_multiplier(cfg, k + 1), rel=1e-12)
