"""Optimizer choice and learning-rate schedules, as multipliers of the peak lr."""

from __future__ import annotations

import math

import pytest
import torch

from tdiag.config import TrainConfig
from tdiag.train.fused_optimizer import FusedOptimizer
from tdiag.train.optim import build_optimizer, build_scheduler, lr_multiplier


def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    "name, kind, cls, momentum",
    [("sgd", "sgd", torch.optim.SGD, 0.0), ("momentum", "sgd", torch.optim.SGD, 0.9),
     ("adam", "adam", torch.optim.Adam, None), ("adamw", "adamw", torch.optim.AdamW, None)],
)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_optimizer_names_build_the_right_kind(name, kind, cls, momentum, device):
    """Fused where torch has the kernels (CPU, CUDA); torch.optim's class elsewhere."""
    cfg = TrainConfig(optimizer=name, lr=0.02, weight_decay=0.01, betas=(0.8, 0.95), eps=1e-7)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(3, device=device))], cfg)
    if device == "cpu":
        assert type(opt) is FusedOptimizer and opt.kind == kind
    else:
        assert type(opt) is cls and not opt.defaults["fused"]
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.01
    if momentum is not None:
        assert group["momentum"] == momentum
    else:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-7


def test_noam_peaks_at_warmup_and_longer_warmup_means_lower_peak():
    cfg = TrainConfig(schedule="noam", warmup_steps=200, max_steps=2000)
    values = [lr_multiplier(cfg, s, 64) for s in range(1, 2001)]
    assert values.index(max(values)) == 199
    assert max(values) == pytest.approx((64 * 200) ** -0.5, rel=1e-12)
    longer = TrainConfig(schedule="noam", warmup_steps=800)
    assert max(lr_multiplier(longer, s, 64) for s in range(1, 2001)) < max(values)


@pytest.mark.parametrize("step", [1, 2, 50, 199, 200, 201, 800, 2000, 10_000])
def test_noam_is_vaswani_eq3(step):
    w, d = 200, 64
    cfg = TrainConfig(schedule="noam", warmup_steps=w)
    # Vaswani et al. 2017, eq. 3, written out independently
    expected = d**-0.5 * min(step**-0.5, step * w**-1.5)
    assert lr_multiplier(cfg, step, d) == pytest.approx(expected, rel=1e-12)


def test_cosine_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(schedule="cosine", warmup_steps=100, max_steps=1000, min_lr_ratio=0.1)
    for s in (1, 25, 99):
        assert lr_multiplier(cfg, s, 64) == pytest.approx(s / 100, rel=1e-12)
    assert lr_multiplier(cfg, 100, 64) == pytest.approx(1.0, rel=1e-12)
    assert lr_multiplier(cfg, 550, 64) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-12)  # halfway through the decay
    assert lr_multiplier(cfg, 1000, 64) == pytest.approx(0.1, rel=1e-12)
    assert lr_multiplier(cfg, 5000, 64) == pytest.approx(0.1, rel=1e-12)
    decay = [lr_multiplier(cfg, s, 64) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_cosine_without_warmup_starts_at_peak():
    cfg = TrainConfig(schedule="cosine", warmup_steps=0, max_steps=10, min_lr_ratio=0.0)
    assert lr_multiplier(cfg, 1, 64) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_multiplier(cfg, 10, 64) == pytest.approx(0.0, abs=1e-15)


def test_constant_ramps_then_stays_at_one():
    cfg = TrainConfig(schedule="constant", warmup_steps=50, max_steps=500)
    for s in (1, 10, 49):
        assert lr_multiplier(cfg, s, 64) == pytest.approx(s / 50, rel=1e-12)
    assert all(lr_multiplier(cfg, s, 64) == 1.0 for s in range(50, 600))
    no_warmup = TrainConfig(schedule="constant", warmup_steps=0)
    assert all(lr_multiplier(no_warmup, s, 64) == 1.0 for s in range(1, 20))


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
    sched = build_scheduler(opt, cfg, 64)
    # before the first scheduler.step(): the rate of optimizer step 1
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_multiplier(cfg, 1, 64), rel=1e-12)
    for k in range(1, 31):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * lr_multiplier(cfg, k + 1, 64), rel=1e-12)


def test_adamw_decays_weight_matrices_only():
    """With zero gradients an AdamW step changes a parameter by decay alone: matrices
    (linear weights, embeddings) shrink by lr * weight_decay, biases and LayerNorm
    gains and offsets do not move."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5, schedule="constant", warmup_steps=0)
    opt = build_optimizer(model.parameters(), cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5), msg=name)
        else:
            assert torch.equal(p.detach(), before[name]), name
    assert {n for n, p in model.named_parameters() if p.dim() >= 2} == {"0.weight", "1.weight"}


def test_adamw_state_layout_does_not_depend_on_weight_decay():
    """A checkpoint of a run without decay resumes into one with decay (same groups)."""
    model = torch.nn.Linear(3, 3)
    off = build_optimizer(model.parameters(), TrainConfig(optimizer="adamw", weight_decay=0.0))
    on = build_optimizer(model.parameters(), TrainConfig(optimizer="adamw", weight_decay=0.1))
    assert [len(g["params"]) for g in off.param_groups] == [1, 1]  # weight; bias
    on.load_state_dict(off.state_dict())  # raises when the group layouts differ
