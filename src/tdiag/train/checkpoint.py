"""Save and restore everything a run needs to continue bit for bit.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, every RNG
state, the data position (the step: batches are a pure function of seed and step),
the metric records so far and the elapsed wall time. It is written to a temporary
file and renamed, so a kill during the write leaves the previous checkpoint intact.

Everything in it is a tensor or a plain value (dict, list, str, int, float, bool,
None), so it is read with `torch.load(weights_only=True)`: a checkpoint from someone
else's `results/` folder cannot run code when it is read, and one that holds anything
else is refused as unreadable. `read` only loads and checks the layout; the caller
compares `config_digest` before anything else of it is used (train/loop.py).
"""

from __future__ import annotations

import json
import pickle
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tdiag.atomic import atomic_path

FORMAT = 2
"""1: a full pickle (numpy RNG state as arrays), read with weights_only=False; 2: tensors and plain values."""


class Unreadable(Exception):
    """A file at the checkpoint path that is not a checkpoint this version can use; the message says why."""


@dataclass
class TrainState:
    step: int = 0
    records: list[dict] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    resumed_from: list[int] = field(default_factory=list)


def rng_states() -> dict:
    """Every RNG state as tensors and plain values (what the weights-only loader accepts)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        # Mersenne Twister words are below 2**32: exact in int64.
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict) -> None:
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    numpy = states["numpy"]
    np.random.set_state(
        (numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
         numpy["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def rank_state(workload: dict) -> dict:
    """What differs between the processes of a data-parallel run: RNG and workload state."""
    return {"rng": rng_states(), "workload": workload}


def save(path: Path, *, digest: str, state: TrainState, workload: dict, model, optimizer, scheduler, scaler,
         ranks: Optional[list[dict]] = None) -> None:
    """`workload` is the workload's own state (e.g. an LSTM's hidden state carried across
    steps); `ranks`, for a data-parallel run, every process's `rank_state` in rank order."""
    payload = {
        "format": FORMAT,
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
        "ranks": ranks,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read(path: Path) -> Optional[dict]:
    """The checkpoint's contents, unused as yet; None when there is no file.

    Raises `Unreadable` for a file that is truncated, not a checkpoint, from an older
    format, or holds objects other than tensors and plain values (which are refused
    without running any of their code).
    """
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():
            # A pickle that is not torch.save's own warns about its protocol before it is refused.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise Unreadable("it holds objects other than tensors and plain values "
                         "(not a checkpoint of this version; nothing in it was run)") from None
    except EOFError:
        raise Unreadable("it is empty or truncated") from None
    except OSError as err:
        raise Unreadable(err.strerror or type(err).__name__) from None
    except Exception as err:  # the zip reader's and unpickler's many errors for a damaged file
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise Unreadable(f"it is truncated or not a checkpoint ({first_line[:120]})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("config_digest"), str):
        raise Unreadable("it is not a tdiag checkpoint (no configuration digest)")
    if payload.get("format") != FORMAT:
        raise Unreadable(f"it is in format {payload.get('format', 1)}, this version reads format {FORMAT}")
    return payload


def restore(payload: dict, *, model, optimizer, scheduler, scaler, workload, rank: int = 0,
            world: int = 1) -> TrainState:
    """Load a checkpoint whose `config_digest` the caller has already matched, as process
    `rank` of `world` (a data-parallel run restores its own RNG and workload state).

    Raises `Unreadable` when its contents do not fit (a file made to match the digest
    but not by this loop); the caller must then rebuild what was partly restored.
    """
    try:
        state = TrainState(
            step=int(payload["step"]),
            records=payload["records"],
            elapsed_seconds=float(payload["elapsed_seconds"]),
            resumed_from=[*map(int, payload["resumed_from"]), int(payload["step"])],
        )
        if not all(isinstance(r, dict) for r in state.records):
            raise TypeError("records must be mappings")
        json.dumps(state.records)  # they are rewritten to metrics.jsonl
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload["scaler"] is not None:
            scaler.load_state_dict(payload["scaler"])
        ranks = payload.get("ranks")
        own = {"rng": payload["rng"], "workload": payload["workload"]} if world == 1 else ranks[rank]
        if world > 1 and len(ranks) != world:
            raise ValueError(f"it was saved by {len(ranks)} processes, not {world}")
        workload.load_state_dict(own["workload"])
        restore_rng(own["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise Unreadable(f"its contents do not fit this run ({type(err).__name__}: {first_line[:120]})") from None
    return state
