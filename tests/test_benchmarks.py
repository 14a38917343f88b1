"""The model-FLOPs count and peak table that benchmarks/lm_throughput.py divides by (its MFU)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tdiag.config import ModelConfig
from tdiag.models import build_model

_spec = importlib.util.spec_from_file_location(
    "lm_throughput", Path(__file__).resolve().parents[1] / "benchmarks" / "lm_throughput.py"
)
lm_throughput = importlib.util.module_from_spec(_spec)
sys.modules["lm_throughput"] = lm_throughput  # its dataclass looks its module up there
_spec.loader.exec_module(lm_throughput)


@pytest.mark.parametrize("tie", [False, True])
def test_matmul_parameters_leave_out_embedding_tables_only(tie: bool):
    cfg = ModelConfig(arch="gpt", d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=8, tie_embeddings=tie)
    model = build_model(cfg, 50, 50)
    total = sum(p.numel() for p in model.parameters())
    tokens, positions = 50 * 16, 8 * 16
    # Tied, the token table is the output layer's weight: multiplied, so it stays in N.
    assert lm_throughput.matmul_parameters(model) == total - positions - (0 if tie else tokens)


def test_step_flops_follow_palm_6n_plus_12_l_d_t():
    gpt = ModelConfig(arch="gpt", d_model=16, n_layers=3, n_heads=2, max_len=8)
    assert lm_throughput.step_flops(gpt, 1000, batch=2, length=8) == 2 * 8 * (6 * 1000 + 12 * 3 * 16 * 8)
    lstm = ModelConfig(arch="lstm", d_model=16, n_layers=3)
    assert lm_throughput.step_flops(lstm, 1000, batch=2, length=8) == 2 * 8 * 6 * 1000


def test_published_peak_matches_the_most_specific_device_name():
    assert lm_throughput.published_peak("NVIDIA H200", "bf16") == 989.5
    assert lm_throughput.published_peak("NVIDIA H200 NVL", "bf16") == 835.5
    assert lm_throughput.published_peak("NVIDIA H100 PCIe", "fp32") == 51.0
    assert lm_throughput.published_peak("NVIDIA H100 80GB HBM3", "tf32") == 494.5
    assert lm_throughput.published_peak("Tesla T4", "bf16") is None


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SNAKEMAKE_LOG = """\
[Wed Dec  2 21:48:32 2026]
localrule data_fetch_wmt14:
    output: resources/wmt14/source.json
    jobid: 55
    resources: tmpdir=/tmp, gpu=0
Shell command: /work/venv/bin/python3 -m tdiag data fetch wmt14

[Wed Dec  2 21:48:32 2026]
rule train_lm_01_lstm_1l_adam:
    input: results/data/wikitext2/train.txt
    jobid: 9
Select jobs to execute...
[Wed Dec  2 21:48:35 2026]
Finished jobid: 55 (Rule: data_fetch_wmt14)
1 of 134 steps (1%) done
[Wed Dec  2 21:49:02 2026]
Finished jobid: 9 (Rule: train_lm_01_lstm_1l_adam)
"""


def test_smoke_job_times_reads_each_job_from_its_start_to_its_finish(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(SNAKEMAKE_LOG)
    times = _load("smoke_job_times")
    assert times.job_seconds(log) == {"data_fetch_wmt14": 3.0, "train_lm_01_lstm_1l_adam": 30.0}
    assert times.kind("train_lm_01_lstm_1l_adam") == "train_lm" and times.kind("data_fetch_wmt14") == "data"
