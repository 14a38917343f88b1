"""A checkpointed run times its forward and backward with and without checkpointing in
its own process (train/side_by_side.py), so the lab's time claim does not compare two
jobs that shared the machine with different neighbours."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from conftest import tdiag
from test_lm_workload import lm_project
from tdiag import paths
from tdiag.config import ModelConfig
from tdiag.models import build_model
from tdiag.train import side_by_side
from tdiag.train.workload import StepBatch

VOCAB = 20


class _Stream:
    """Batches of random token rows for a GPT, two micro-batches a step."""

    steps_per_epoch = 3

    def train_batch(self, step: int, seed: int) -> StepBatch:
        ids = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(step))
        micro = [(ids[:2, :-1], ids[:2, 1:]), (ids[2:, :-1], ids[2:, 1:])]
        return StepBatch(micro, 32, {}, whole=None)

    def loss(self, model, micro, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        inputs, targets = micro
        return F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), reduction="sum") / n_tokens


def test_both_timings_come_from_the_same_model_whose_checkpointed_passes_recompute():
    cfg = ModelConfig(arch="gpt", n_layers=2, d_model=16, n_heads=2, d_ff=32, max_len=16, dropout=0.0,
                      checkpointing="blocks")
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, VOCAB, None)
    weights = {name: p.detach().clone() for name, p in model.state_dict().items()}
    calls = []
    block = model.layers[0]
    block_forward = block.forward

    def counted(*args, **kwargs):
        calls.append(block.training)
        return block_forward(*args, **kwargs)

    block.forward = counted

    timed = side_by_side.checkpointing_times(model, _Stream(), 0, 0.0, torch.device("cpu"), contextlib.nullcontext,
                                             pairs=3)

    assert set(timed) == {"checkpointed_seconds", "plain_seconds", "pairs"} and timed["pairs"] == 3
    assert timed["checkpointed_seconds"] > 0 and timed["plain_seconds"] > 0
    # 5 pairs x 2 micro-batches: a plain pass runs the block once, a checkpointed one twice (its recompute).
    assert len(calls) == 5 * 2 * (1 + 2) and all(calls)
    assert model.checkpointing is True  # the run's own setting, restored
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(weights[name], p) for name, p in model.state_dict().items())


def test_only_a_run_that_checkpoints_its_blocks_records_the_side_by_side_timing(tmp_path: Path):
    project = lm_project(tmp_path)
    tdiag("data", "prepare", "wikitext2", cwd=project)
    for run in ("checkpointing-1", "checkpointing-2"):
        tdiag("train", "lab", run, "--threads", "1", cwd=project)
    plain, checkpointed = (json.loads((project / paths.run_summary("lab", run)).read_text())["per_seed"][0]
                           for run in ("checkpointing-1", "checkpointing-2"))
    assert "side_by_side" not in plain
    assert checkpointed["side_by_side"]["pairs"] == side_by_side.PAIRS
    assert checkpointed["side_by_side"]["checkpointed_seconds"] > 0 and checkpointed["side_by_side"]["plain_seconds"] > 0
    log = (project / paths.seed_log("lab", "checkpointing-2", 0)).read_text()
    assert f"forward and backward, timed side by side over {side_by_side.PAIRS} pairs:" in log
