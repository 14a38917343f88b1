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
