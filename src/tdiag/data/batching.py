"""Padding, and a batch order that is a pure function of (seed, step).

Because batch `s` is computed from the seed and the step alone, the data position of
a resumed run is just its step counter: no loader state to save, and a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def pad(seqs: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """Right-pad integer sequences into a (N, max_len) LongTensor."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    out = np.full((len(seqs), int(lengths.max())), pad_id, dtype=np.int64)
    # One scatter of every token at once: a tensor per row cost 1.5 s per toy dataset.
    out[np.arange(out.shape[1]) < lengths[:, None]] = np.fromiter(
        (token for s in seqs for token in s), dtype=np.int64, count=int(lengths.sum())
    )
    return torch.from_numpy(out)


def trim(batch: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop trailing columns that are padding in every row."""
    used = (batch != pad_id).any(dim=0).nonzero()
    return batch[:, : int(used.max()) + 1] if len(used) else batch[:, :1]


@dataclass(frozen=True)
class PairedData:
    """A split of a seq2seq dataset held as padded tensors (small enough for memory)."""

    src: torch.Tensor  # (N, S)
    tgt: torch.Tensor  # (N, T), starts with <go>, ends with <stop>

    def __len__(self) -> int:
        return self.src.shape[0]

    def batch(self, indices: torch.Tensor, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return trim(self.src[indices], pad_id), trim(self.tgt[indices], pad_id)


def load_pairs(path: Path, pad_id: int = 0) -> PairedData:
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path}: no examples")
    return PairedData(pad([r["src"] for r in records], pad_id), pad([r["tgt"] for r in records], pad_id))


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Example indices of batch `step` (0-based): shuffled epochs, last partial batch dropped."""
    per_epoch = max(n // batch_size, 1)
    epoch, position = divmod(step, per_epoch)
    order = _epoch_order(n, seed, epoch)
    return order[position * batch_size : (position + 1) * batch_size]


def token_buckets(lengths: list[int], max_tokens: int, tie_breaks: list[int] | None = None) -> list[torch.Tensor]:
    """Example indices sorted by length and cut into batches whose padded size
    (examples x longest length) stays within `max_tokens`; an example longer than
    `max_tokens` is a batch of its own.

    Batching sentences of similar length wastes little on padding (Vaswani et al. 2017,
    section 5.1: "sentence pairs were batched together by approximate sequence length").
    Ties in length are ordered by `tie_breaks` (e.g. the source lengths), then by index,
    so the batches are the same on every run.
    """
    keys = tie_breaks or [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], keys[i], i))
    buckets, current = [], []
    for i in order:
        # Sorted ascending, so the newest example is the longest of its batch.
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            buckets.append(torch.tensor(current, dtype=torch.long))
            current = []
        current.append(i)
    if current:
        buckets.append(torch.tensor(current, dtype=torch.long))
    return buckets


def bucket_indices(buckets: list[torch.Tensor], seed: int, step: int) -> torch.Tensor:
    """Example indices of batch `step` (0-based): each epoch visits every bucket once, in
    an order drawn from (seed, epoch) alone, so a resumed run sees the same batches."""
    epoch, position = divmod(step, len(buckets))
    order = np.random.default_rng([seed, epoch]).permutation(len(buckets))
    return buckets[int(order[position])]
