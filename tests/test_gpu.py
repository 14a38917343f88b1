"""GPU paths: run on a machine with CUDA (`pytest -m gpu`); skipped cleanly without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tdiag

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_sdpa_flash_kernel_runs_our_causal_attention_in_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tdiag.models.attention import MultiHeadAttention

    attention = MultiHeadAttention(256, 4, 0.0, "sdpa").cuda().to(torch.bfloat16)
    x = torch.randn(8, 128, 256, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot take the call
        out = attention(x, x, causal=True)
    reference = MultiHeadAttention(256, 4, 0.0, "manual").cuda().to(torch.bfloat16)
    reference.load_state_dict(attention.state_dict())
    assert torch.allclose(out.float(), reference(x, x, causal=True).float(), atol=3e-2)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_on_cuda_with_mixed_precision_records_gpu_memory(tiny_project: Path, precision: str):
    tdiag("--set", f"studies.toy.train.precision={precision}", "train", "toy", "copy", cwd=tiny_project)
    summary = json.loads((tiny_project / "results/runs/toy/copy/summary.json").read_text())
    seed = summary["per_seed"][0]
    assert seed["status"] == "completed" and seed["device"].startswith("cuda")
    assert 0 < seed["peak_memory_bytes"] < torch.cuda.get_device_properties(0).total_memory
    config = json.loads((tiny_project / "results/runs/toy/copy/seed-0/config.json").read_text())
    assert config["hardware"]["gpus"]
    assert "slot lock" in config["device"] or "CUDA_VISIBLE_DEVICES" in config["device"]


def test_a_training_step_waits_for_the_device_once():
    """Loss, norms and activation norms stay on the device until the one transfer at the
    step's end (train/loop.py): CUDA's sync debug mode warns at every synchronising call."""
    import warnings

    from tdiag.config import ModelConfig, TrainConfig
    from tdiag.models import build_model
    from tdiag.train.loop import Watch, train_step
    from tdiag.train.optim import build_optimizer
    from test_compiling import RandomPairs

    device = torch.device("cuda")
    model = build_model(ModelConfig(d_model=32, n_heads=2, d_ff=64), 11, 11, 0).to(device).train()
    tc = TrainConfig(optimizer="adam", lr=1e-3, schedule="constant", warmup_steps=0, max_steps=10, clip_grad_norm=1.0)
    optimizer = build_optimizer(model.parameters(), tc)
    watch = Watch(model, optimizer, device)
    workload = RandomPairs()
    train_step(model, optimizer, None, workload, tc, 1, device, watch)  # first-call work (allocations, states)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(model, optimizer, None, workload, tc, 2, device, watch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 2, [str(w.message) for w in syncs]  # the transfer (and the batch's own copy to the device)


def test_compiled_training_on_cuda_gives_the_eager_losses():
    from test_compiling import _steps_on

    for name in ("gpt-sdpa", "encoder_decoder-sdpa"):
        torch._dynamo.reset()
        eager = _steps_on(name, None, torch.device("cuda"))
        inductor = _steps_on(name, "inductor", torch.device("cuda"))
        assert [r["loss"] for r in inductor] == pytest.approx([r["loss"] for r in eager], rel=1e-3), name
