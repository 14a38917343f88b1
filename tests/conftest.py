"""Shared fixtures: a tiny, fast configuration derived from the committed params.yaml."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_TRAIN = {"max_steps": 60, "eval_every": 20, "checkpoint_every": 20, "warmup_steps": 20, "batch_size": 50}

MIRROR = REPO.parent / "shared" / "data"
"""The offline data mirror beside the checkout (its README); tests that need it skip without it."""
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"offline data mirror {MIRROR} not present")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_params(extra: dict | None = None) -> dict:
    """The repo's params.yaml shrunk to seconds of CPU work: small datasets, a small
    model, two task runs (integer and character level) and a two-run grid; the same
    sizes at both scales."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, dataset in params["datasets"].items():
        if dataset["task"] == "language_model":
            continue  # _tiny_lm
        held_out = 4 if dataset["task"] == "structured" else 20
        dataset.update(n_train=300, n_valid=held_out, n_test=held_out)
    toy = params["studies"]["toy"]
    toy["seeds"] = 1
    toy["model"].update(d_model=32, d_ff=64)
    toy["train"].update(TINY_TRAIN)
    toy["dataset"] = "copy"  # the grid's: the one dataset tiny_project generates
    toy["runs"] = {"copy": {"dataset": "copy"}, "dates": {"dataset": "dates"}}
    toy["grids"] = {"qk_wo": {"vary": {"model.init.tie": ["none", "qk"]}}}
    # An absolute mirror path: the project may run from a temporary copy.
    params["data"]["mirror"] = str(MIRROR)
    _tiny_lm(params)
    _tiny_wmt14(params)
    _tiny_lab(params)
    params["scales"] = {"smoke": {}, "full": {}}
    return _merge(params, extra or {})


def _tiny_lm(params: dict) -> None:
    """The lm study in seconds: one LSTM and one GPT run, 16 wide, one epoch over the
    first 3,000 tokens of the mirror's WikiText-2 re-split."""
    params["datasets"]["wikitext2"].update(train_tokens=3000, eval_tokens=2000)
    lm = params["studies"]["lm"]
    lm["model"].update(d_model=16, n_heads=2, d_ff=32, dropout=0.0)
    # eval_every: once an epoch (the study's own value is per scale, and scales are dropped)
    lm["train"].update(epochs=1, batch_size=10, bptt=20, checkpoint_every=100, eval_every=None)
    lm["runs"] = {name: lm["runs"][name] for name in ("01-lstm-1l-adam", "06-gpt-1l-adamw")}


def _tiny_lab(params: dict) -> None:
    """The lab in seconds: its seven grids, each with as few cells as still compare
    something, on the tiny lm data (3,000 training tokens), a 16-wide 2-layer GPT."""
    lab = params["studies"]["lab"]
    lab["model"].update(n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0, max_len=64)
    lab["train"].update(epochs=1, bptt=20, batch_size=10, checkpoint_every=100)
    short = {"epochs": None, "max_steps": 6, "eval_every": 3}
    grids = lab["grids"]
    grids["lr_batch"] = {"vary": {"train.lr": [1.0e-3, 1.0e-2], "train.batch_size": [5, 10]}}
    grids["optimizer_lr"]["vary"]["optimizer"] = [
        {"train.optimizer": "momentum", "train.lr": 0.03}, {"train.optimizer": "adam", "train.lr": 1.0e-3},
        {"train.optimizer": "adamw", "train.lr": 1.0e-3},
    ]
    grids["optimizer_lr"]["overrides"] = {"train": short}
    grids["checkpointing"]["overrides"] = {"train": short}
    grids["micro_batches"] = {"vary": {"train.micro_batches": [1, 2]}, "overrides": {"train": short}}
    grids["precision"]["overrides"]["train"].update(short)
    grids["attention_length"] = {
        "vary": {"model.attention": ["manual", "sdpa"],
                 "context": [{"train.bptt": 16, "train.batch_size": 4}, {"train.bptt": 64, "train.batch_size": 1}]},
        "overrides": {"train": short},
    }
    grids["norm_warmup"] = {"vary": {"model.norm": ["pre", "post"], "train.warmup_steps": [0, 3]},
                            "overrides": {"model": {"n_layers": 3}, "train": short}}


def _tiny_wmt14(params: dict) -> None:
    """The wmt14 study in seconds: 64/8/8 newstest2014 pairs from the mirror, 200 BPE
    merges, a 16-wide 1 + 1 layer model, 30 steps, beam search of width 2."""
    params["datasets"]["wmt14_en_fr"].update(n_train=64, n_valid=8, n_test=8, bpe_merges=200)
    wmt14 = params["studies"]["wmt14"]
    wmt14["model"].update(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32)
    wmt14["train"].update(lr=1.0e-3, max_steps=30, eval_every=15, eval_examples=8, checkpoint_every=15, warmup_steps=10,
                          batch_tokens=400, beam_size=2)


def pytest_collection_modifyitems(config, items):
    """The modules with the most end-to-end (`slow`) tests first, each module's tests in
    their order. The test command (README) runs the modules on one xdist worker per core
    (`--dist loadfile --no-loadscope-reorder`), each taking the next module when it is
    done: the longest modules, a whole pipeline under DVC or Snakemake, start at once
    beside the rest instead of last."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: ties keep their order


@pytest.fixture(autouse=True)
def one_thread():
    """Every in-process test runs tiny models, whose many small ops a second OpenMP thread
    only slows down on a 2-core machine (subprocesses keep torch's own default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_params(folder: Path, params: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def tdiag(*args: str, cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the `tdiag` CLI as a user would, in a separate process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tdiag", *args], cwd=cwd, env=env, capture_output=True, text=True, **kwargs
    )
    if check and done.returncode != 0:
        raise AssertionError(f"tdiag {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A working folder with a tiny params.yaml and the copy dataset generated."""
    write_params(tmp_path, tiny_params())
    tdiag("data", "synth", "copy", cwd=tmp_path)
    return tmp_path
