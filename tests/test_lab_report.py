"""The lab page's findings are computed from the runs: each sentence follows the numbers it is given."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tdiag import config
from tdiag.report.lab import EXPERIMENTS, Lab

from conftest import REPO


def _lab(cells: list[dict]) -> Lab:
    """A Lab over the given cells, each {run, grid, status, valid_loss, step_time, saved_bytes, peak, config...};
    every cell gets ten training records with its step time and saved bytes."""
    runs, records = [], []
    for cell in cells:
        loss = cell.get("valid_loss")
        row = {
            "run": cell["run"], "seed": 0, "grid": cell["grid"], "status": cell.get("status", "completed"),
            "valid.loss": loss, "valid.perplexity": math.exp(loss) if loss is not None else None,
            "peak_memory_bytes": cell.get("peak", 1000), "memory_measure": "cpu_tensor_bytes",
            "diverged_step": cell.get("diverged_step"), "reason": cell.get("reason"),
            "device_description": "cpu", "scale": "smoke",
            "variant": "", "config.train.precision": "fp32", "config.train.epochs": 1,
            "config.train.batch_size": 10, "config.train.micro_batches": 1, "config.train.bptt": 32,
        }
        row.update({f"config.{k}": v for k, v in cell.get("config", {}).items()})
        runs.append(row)
        for step in range(1, 11 if row["status"] != "unsupported" else 1):
            records.append({"run": cell["run"], "seed": 0, "kind": "train", "step": step, "loss": 5.0,
                            "step_time": cell.get("step_time", 0.01), "saved_bytes": cell.get("saved_bytes", 100),
                            "tokens": 320})
    return Lab(pd.DataFrame(runs), pd.DataFrame(records))


def test_the_seven_grids_exist_at_both_scales():
    for scale in ("smoke", "full"):
        cfg = config.load(REPO / "params.yaml", [f"scale={scale}"])
        grids = {cfg.run("lab", run).grid for run in cfg.run_names("lab")}
        assert grids == set(EXPERIMENTS), scale


def test_lr_batch_names_the_best_cell_and_every_diverged_cell():
    cells = []
    losses = {(1e-3, 5): 5.0, (1e-3, 10): 4.5, (1e-2, 5): 4.2, (1e-2, 10): None}
    for n, ((lr, batch), loss) in enumerate(losses.items(), start=1):
        cells.append({"run": f"lr_batch-{n}", "grid": "lr_batch", "valid_loss": loss,
                      "status": "diverged" if loss is None else "completed",
                      "config": {"train.lr": lr, "train.batch_size": batch}})
    table, text = _lab(cells).lr_batch()
    assert math.isnan(table.loc[1e-2, 10])  # the diverged cell holds no number
    assert table.loc[1e-2, 5] == 4.2
    assert "lr 0.01 with batch 5" in text and "1 of 4 cells diverged (lr 0.01 x batch 10)" in text
    assert "the best rate falls as the batch size grows" in text  # batch 5: 0.01, batch 10: 0.001


@pytest.mark.parametrize(
    ("pre", "post", "post_warm", "verdict"),
    [(4.0, 5.0, 4.2, "holds at"), (5.0, 4.0, 3.5, "holds in part"), (5.0, 4.0, 4.5, "does not hold"),
     (4.0, None, 4.5, "holds at")],
)
def test_norm_warmup_verdict_follows_the_losses(pre, post, post_warm, verdict):
    values = {("pre", 0): pre, ("pre", 50): 4.0, ("post", 0): post, ("post", 50): post_warm}
    cells = [
        {"run": f"norm_warmup-{n}", "grid": "norm_warmup", "valid_loss": loss,
         "status": "diverged" if loss is None else "completed",
         "config": {"model.norm": norm, "train.warmup_steps": warmup}}
        for n, ((norm, warmup), loss) in enumerate(values.items(), start=1)
    ]
    _, text = _lab(cells).norm_warmup()
    assert f"expectation (pre-LN trains without warmup to a lower loss; post-LN needs warmup) {verdict}" in text
    if post is None:
        assert "post-LN diverged" in text


def test_an_unsupported_precision_is_a_row_with_its_reason_and_named_in_the_finding():
    cells = [
        {"run": "precision-1", "grid": "precision", "valid_loss": 5.0, "step_time": 0.02, "saved_bytes": 200,
         "config": {"train.precision": "fp32"}},
        {"run": "precision-2", "grid": "precision", "valid_loss": 5.01, "step_time": 0.01, "saved_bytes": 100,
         "config": {"train.precision": "bf16"}},
    ]
    reason = "fp16 with a grad scaler needs a CUDA device; use fp32 or bf16 on cpu"
    cells.append({"run": "precision-3", "grid": "precision", "status": "unsupported", "valid_loss": None,
                  "reason": reason, "config": {"train.precision": "fp16"}})
    lab = _lab(cells)
    table, text = lab.precision()
    assert table.loc["fp16", "status"] == "unsupported" and table.loc["fp16", "not run because"] == reason
    assert f"fp16 was not run: {reason}" in text
    assert "bf16 autocast ran at 0.50x fp32's median step time with 0.50x its activation bytes" in text


def test_attention_length_reports_the_ratio_at_each_end():
    cells = []
    for n, (attention, bptt, saved) in enumerate(
        [("manual", 32, 200), ("manual", 256, 1600), ("sdpa", 32, 100), ("sdpa", 256, 200)], start=1
    ):
        cells.append({"run": f"attention_length-{n}", "grid": "attention_length", "valid_loss": 6.0,
                      "saved_bytes": saved, "config": {"model.attention": attention, "train.bptt": bptt}})
    table, text = _lab(cells).attention_length()
    assert table.loc[256, "manual - sdpa activations (MiB)"] == round(1400 / 2**20, 2)
    assert "at 32 tokens 0.0 MiB more" in text
    assert "the gap grows 14.0x from the shortest context to the longest" in text


def _checkpointing_cells(blocks_time: float, none_time: float = 0.01) -> list[dict]:
    return [
        {"run": "checkpointing-1", "grid": "checkpointing", "valid_loss": 5.0, "step_time": none_time,
         "saved_bytes": 400, "peak": 1000, "config": {"model.checkpointing": "none"}},
        {"run": "checkpointing-2", "grid": "checkpointing", "valid_loss": 5.0, "step_time": blocks_time,
         "saved_bytes": 100, "peak": 700, "config": {"model.checkpointing": "blocks"}},
    ]


@pytest.mark.parametrize(("blocks_time", "phrase"), [(0.015, "at 1.50x the median step time (each block's forward"),
                                                      (0.008, "the recomputation's cost did not show through")])
def test_checkpointing_finding_states_the_time_it_measured(blocks_time, phrase):
    _, text = _lab(_checkpointing_cells(blocks_time)).checkpointing()
    assert phrase in text and "(75% less)" in text and "agree within 1e-3" in text


def test_checkpointing_finding_takes_its_time_from_the_side_by_side_timing():
    """Two jobs' step times say the checkpointed step was faster; the timing in one process says otherwise."""
    lab = _lab(_checkpointing_cells(blocks_time=0.01, none_time=0.02))
    lab.runs["side_by_side.checkpointed_seconds"] = [None, 0.013]
    lab.runs["side_by_side.plain_seconds"] = [None, 0.010]
    _, text = lab.checkpointing()
    assert ("at 1.30x the forward and backward time, timed side by side in one process (13.0 ms checkpointed, "
            "10.0 ms without) (each block's forward runs twice)") in text
    assert "did not show through" not in text
