"""Shared fixtures: a tiny, fast configuration derived from the committed params.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_TRAIN = {"max_steps": 60, "eval_every": 20, "checkpoint_every": 20, "warmup_steps": 20, "batch_size": 50}


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
        held_out = 4 if dataset["task"] == "structured" else 20
        dataset.update(n_train=300, n_valid=held_out, n_test=held_out)
    toy = params["studies"]["toy"]
    toy["seeds"] = 1
    toy["model"].update(d_model=32, d_ff=64)
    toy["train"].update(TINY_TRAIN)
    toy["runs"] = {"copy": {"dataset": "copy"}, "dates": {"dataset": "dates"}}
    toy["grids"] = {"qk_wo": {"vary": {"model.init.tie_qk": [False, True]}}}
    params["scales"] = {"smoke": {}, "full": {}}
    return _merge(params, extra or {})


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
