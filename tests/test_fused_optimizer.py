"""The fused optimizers outside torch.optim: bitwise torch's fused step, torch.optim's
checkpoint layout both ways, GradScaler's skipped steps, and no torch._dynamo import."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
import torch

from tdiag.config import TrainConfig
from tdiag.train.fused_optimizer import FusedOptimizer
from tdiag.train.optim import build_optimizer, build_scheduler, decay_groups, lr_multiplier

CONFIGS = {
    "sgd": TrainConfig(optimizer="sgd", lr=0.05, weight_decay=0.01),
    "momentum": TrainConfig(optimizer="momentum", lr=0.05, momentum=0.9, weight_decay=0.01),
    "adam": TrainConfig(optimizer="adam", lr=0.01, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.01),
    "adamw": TrainConfig(optimizer="adamw", lr=0.01, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1),
}


def _torch_optimizer(params, cfg: TrainConfig):
    """What build_optimizer returned before this module: torch.optim with fused=True."""
    params = list(params)
    if cfg.optimizer in ("sgd", "momentum"):
        momentum = cfg.momentum if cfg.optimizer == "momentum" else 0.0
        return torch.optim.SGD(params, lr=cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                fused=True)
    return torch.optim.AdamW(decay_groups(params, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             fused=True)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8),
                                          torch.nn.Linear(8, 11))
        self.unused = torch.nn.Linear(2, 2)  # never gets a gradient: both optimizers must leave it

    def forward(self, tokens):
        return self.layers(tokens)


def _model(seed: int = 0) -> _Model:
    torch.manual_seed(seed)
    return _Model()


def _train(model, optimizer, steps: int, first: int = 0) -> None:
    for step in range(first, first + steps):
        generator = torch.Generator().manual_seed(step)
        tokens = torch.randint(0, 11, (4, 6), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.roll(1, 1).flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_step_is_bitwise_torch_fused_step(name):
    cfg = CONFIGS[name]
    ours, theirs = _model(), _model()
    optimizer = build_optimizer(ours.parameters(), cfg)
    assert isinstance(optimizer, FusedOptimizer)
    _train(ours, optimizer, 6)
    _train(theirs, _torch_optimizer(theirs.parameters(), cfg), 6)
    _assert_same_parameters(ours, theirs)
    assert not torch.equal(ours.layers[3].weight, _model().layers[3].weight)  # it did train
    assert torch.equal(ours.unused.weight, _model().unused.weight)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_torch_optim_checkpoint_resumes_bitwise(name):
    """State written by torch.optim (with LambdaLR's `initial_lr` in its groups, as every
    checkpoint before this module) loads, and training goes on as torch's would."""
    cfg = CONFIGS[name]
    theirs = _model()
    torch_optimizer = _torch_optimizer(theirs.parameters(), cfg)
    torch.optim.lr_scheduler.LambdaLR(torch_optimizer, lambda done: 0.5)
    _train(theirs, torch_optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": theirs.state_dict(), "optimizer": torch_optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    ours = _model(seed=1)
    ours.load_state_dict(saved["model"])
    optimizer = build_optimizer(ours.parameters(), cfg)
    optimizer.load_state_dict(saved["optimizer"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * 0.5)  # the saved rate, as torch.optim
    _train(ours, optimizer, 3, first=3)
    _train(theirs, torch_optimizer, 3, first=3)
    _assert_same_parameters(ours, theirs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_own_state_dict_round_trips_through_a_weights_only_load(name):
    cfg = CONFIGS[name]
    straight, resumed = _model(), _model()
    optimizer = build_optimizer(straight.parameters(), cfg)
    _train(straight, optimizer, 3)
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    second = build_optimizer(resumed.parameters(), cfg)
    second.load_state_dict(saved["optimizer"])
    _train(straight, optimizer, 3, first=3)
    _train(resumed, second, 3, first=3)
    _assert_same_parameters(straight, resumed)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_sparse_gradient_is_refused_in_one_line(name):
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    optimizer = build_optimizer(embedding.parameters(), CONFIGS[name])
    with pytest.raises(RuntimeError, match="takes dense gradients.*sparse=False"):
        optimizer.step()


def test_a_state_of_another_group_layout_is_refused():
    model = _model()
    adam = build_optimizer(model.parameters(), CONFIGS["adam"])  # one group
    adamw = build_optimizer(model.parameters(), CONFIGS["adamw"])  # two
    with pytest.raises(ValueError, match="parameter groups do not match"):
        adamw.load_state_dict(adam.state_dict())


@pytest.mark.parametrize("unscale_first", [True, False], ids=["unscaled-by-the-loop", "scaled"])
@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_grad_scaler_skips_a_step_with_an_inf_gradient_inside_the_kernel(name, unscale_first):
    """As torch's fused optimizers: the update and Adam's step count are left for an inf
    gradient, and a finite one is unscaled and applied the same way, whether the gradients
    were unscaled before the step (the loop does, to clip) or the kernel unscales them."""
    cfg = CONFIGS[name]
    results = []
    for make in (build_optimizer, _torch_optimizer):
        model = _model()
        optimizer = make(model.parameters(), cfg)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for poison in (False, True, False):
            tokens = torch.arange(24).remainder(11).view(4, 6)
            loss = model(tokens).float().pow(2).mean()
            scaler.scale(loss * (float("inf") if poison else 1.0)).backward()
            if unscale_first:
                scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        results.append((model, optimizer))
    (ours, ours_optimizer), (theirs, theirs_optimizer) = results
    _assert_same_parameters(ours, theirs)
    if name == "adam":
        steps = [float(s["step"]) for s in ours_optimizer.state.values()]
        assert steps and all(s == 2.0 for s in steps)


def test_grad_scaler_steps_without_reading_a_value_back(monkeypatch):
    """GradScaler hands the inf flag to the kernel instead of `.item()` on it (a host
    synchronisation each step on a GPU), as with torch's fused optimizers."""
    model = _model()
    optimizer = build_optimizer(model.parameters(), CONFIGS["adam"])
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.arange(6).view(1, 6)).pow(2).mean()).backward()
    scaler.unscale_(optimizer)

    def no_item(self):
        raise AssertionError("a tensor was read back during the step")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    scaler.step(optimizer)
    monkeypatch.undo()
    assert all(float(s["step"]) == 1.0 for s in optimizer.state.values())


def test_the_schedule_resumes_from_a_lambda_lr_state():
    cfg = TrainConfig(schedule="cosine", warmup_steps=3, max_steps=20, lr=0.1)
    model = _model()
    theirs = _torch_optimizer(model.parameters(), CONFIGS["adam"])
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(theirs, lambda done: 0.25 + done / 8)
    for _ in range(5):
        theirs.step()  # no gradients: only so that LambdaLR sees the order it expects
        lambda_lr.step()
    optimizer = build_optimizer(model.parameters(), cfg)
    schedule = build_scheduler(optimizer, cfg, 64)
    schedule.load_state_dict(lambda_lr.state_dict())
    assert schedule.last_epoch == 5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(CONFIGS["adam"].lr * lr_multiplier(cfg, 6, 64))


def test_building_stepping_and_saving_does_not_import_torch_dynamo():
    """The reason this module exists: torch.optim imports torch._dynamo (2.3 s a process)."""
    script = textwrap.dedent("""
        import sys
        import torch
        from tdiag.config import TrainConfig
        from tdiag.train.optim import build_optimizer, build_scheduler
        for name in ("sgd", "momentum", "adam", "adamw"):
            cfg = TrainConfig(optimizer=name)
            model = torch.nn.Linear(3, 3)
            optimizer = build_optimizer(model.parameters(), cfg)
            schedule = build_scheduler(optimizer, cfg, 64)
            model(torch.ones(2, 3)).sum().backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            optimizer.load_state_dict(optimizer.state_dict())
            schedule.load_state_dict(schedule.state_dict())
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_on_cuda_a_scaled_fp16_step_is_bitwise_torch_fused_step(name):
    """The kernels' CUDA side, with GradScaler handing over its scale and inf flag (one
    step of three has an inf gradient)."""
    cfg = CONFIGS[name]
    results = []
    for make in (build_optimizer, _torch_optimizer):
        model = _model().cuda()
        optimizer = make(model.parameters(), cfg)
        scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
        for step in range(3):
            tokens = torch.arange(24, device="cuda").remainder(11).view(4, 6)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(tokens).float().pow(2).mean()
            scaler.scale(loss * (float("inf") if step == 1 else 1.0)).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        results.append(model)
    _assert_same_parameters(*results)
