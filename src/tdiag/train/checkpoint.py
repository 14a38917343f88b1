"""Save and restore everything a run needs to continue bit for bit.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, every RNG
state, the data position (the step: batches are a pure function of seed and step),
the metric records so far and the elapsed wall time. It is written to a temporary
file and renamed, so a kill during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tdiag.atomic import atomic_path


@dataclass
class TrainState:
    step: int = 0
    records: list[dict] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    resumed_from: list[int] = field(default_factory=list)


def rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(path: Path, *, digest: str, state: TrainState, workload: dict, model, optimizer, scheduler, scaler) -> None:
    """`workload` is the workload's own state (e.g. an LSTM's hidden state carried across steps)."""
    payload = {
        "config_digest": digest,
        "step": state.step,
        "data_position": state.step,
        "records": state.records,
        "elapsed_seconds": state.elapsed_seconds,
        "resumed_from": state.resumed_from,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states(),
        "workload": workload,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: Path) -> Optional[dict]:
    """The checkpoint's contents, or None when there is none (or it is unreadable)."""
    if not path.exists():
        return None
    try:
        # Our own file: it holds numpy RNG state, which the weights-only loader refuses.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a truncated file from a foreign writer: start over rather than crash
        return None


def restore(payload: dict, *, model, optimizer, scheduler, scaler) -> TrainState:
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    restore_rng(payload["rng"])
    return TrainState(
        step=payload["step"],
        records=payload["records"],
        elapsed_seconds=payload["elapsed_seconds"],
        resumed_from=[*payload["resumed_from"], payload["step"]],
    )
