"""What every check shares: the result type and the model under test (`Subject`).

A check works on a model's calling contract, not on tdiag's classes, so any model that
keeps one of the two contracts can be checked:

- `ENCODER_DECODER`: `model(src (B, S), tgt_in (B, T)) -> logits (B, T, V)`; the model
  builds its own masks from `pad_id` (source pads hidden from encoder self-attention
  and cross-attention, the decoder causal). A batch is `(src, tgt)` with `tgt` (B, T + 1)
  starting with the start symbol: `tgt[:, :-1]` is fed, `tgt[:, 1:]` is predicted, and
  pad targets are not scored (train/seq2seq_workload.py's format).
- `LANGUAGE_MODEL`: `model(tokens (B, T)) -> logits (B, T, V)`, or a tuple whose first
  element is the logits (an LSTM's `(logits, state)`). A batch is `(inputs, targets)`,
  both (B, T), with no padding.

The checks that compare outputs or gradients run the model in float64 on the CPU, so a
difference they measure is the model's and not float32 rounding, and their tolerances
can be tiny; the two that train (overfit, determinism) run in float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ENCODER_DECODER = "encoder_decoder"
LANGUAGE_MODEL = "language_model"
KINDS = (ENCODER_DECODER, LANGUAGE_MODEL)

CHECK_ROWS = 4
"""Samples of the given batch the checks use: enough for batch independence to compare a
sample with its neighbours, few enough that a small model's whole run takes seconds."""


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict: `measured` against `threshold`, and when it failed, one line
    naming the bug it points to (on success, a line saying what was measured)."""

    name: str
    passed: bool
    measured: float
    threshold: float
    message: str

    def to_json(self) -> dict:
        """A JSON-ready dict; a non-finite measurement becomes its string ('nan', 'inf')."""
        record = asdict(self)
        for key in ("measured", "threshold"):
            value = float(record[key])
            record[key] = value if math.isfinite(value) else str(value)
        return record


@dataclass(frozen=True)
class Subject:
    """A model to check: how to build it, what it is fed, and its vocabulary.

    `factory(seed)` returns a freshly initialised model; the checks seed torch with the
    same seed just before calling it, so a factory need not seed itself. `batch` is a
    real batch in the kind's format (module docstring).
    """

    kind: str
    factory: Callable[[int], nn.Module]
    vocab_sizes: tuple[int, int]
    """(source, target); a language model's two are equal."""
    batch: tuple[Tensor, Tensor]
    pad_id: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.kind == ENCODER_DECODER and self.pad_id is None:
            raise ValueError("an encoder-decoder subject needs its pad_id")

    @property
    def vocab(self) -> int:
        """The vocabulary the logits range over (the target's)."""
        return self.vocab_sizes[1]

    def build(self, dtype: torch.dtype = torch.float64) -> nn.Module:
        """A fresh model in `dtype`, torch seeded with the subject's seed first."""
        torch.manual_seed(self.seed)
        return self.factory(self.seed).to(dtype)

    def rows(self, index) -> tuple[Tensor, Tensor]:
        """The batch cut to the rows `index` (a slice or a list of row numbers)."""
        return tuple(t[index] for t in self.batch)

    def small(self) -> "Subject":
        """The subject on the first `CHECK_ROWS` rows of its batch, without columns that
        are padding in every one of them (the rows taken may be shorter than the batch)."""
        batch = self.rows(slice(0, CHECK_ROWS))
        if self.kind == ENCODER_DECODER:
            batch = tuple(_drop_pad_columns(t, self.pad_id) for t in batch)
        return replace(self, batch=batch)

    # Contract helpers: the only places that know the two batch formats.

    def decoder_input(self, batch) -> Tensor:
        """The tokens the causal part of the model reads (B, T)."""
        return batch[1][:, :-1] if self.kind == ENCODER_DECODER else batch[0]

    def with_decoder_input(self, batch, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """`batch` with its causal input replaced by `tokens` (B, T)."""
        if self.kind == ENCODER_DECODER:
            return batch[0], torch.cat([tokens, batch[1][:, -1:]], dim=1)
        return tokens, batch[1]

    def targets(self, batch) -> Tensor:
        return batch[1][:, 1:] if self.kind == ENCODER_DECODER else batch[1]

    def scored(self, batch) -> Tensor:
        """(B, T) bool: the positions whose prediction is scored (not padding)."""
        targets = self.targets(batch)
        return targets != self.pad_id if self.kind == ENCODER_DECODER else torch.ones_like(targets, dtype=torch.bool)

    def logits(self, model: nn.Module, batch) -> Tensor:
        out = model(batch[0], batch[1][:, :-1]) if self.kind == ENCODER_DECODER else model(batch[0])
        return out[0] if isinstance(out, tuple) else out  # (B, T, V)

    def loss(self, model: nn.Module, batch) -> Tensor:
        """Mean cross-entropy over the scored positions (nats)."""
        logits = self.logits(model, batch)
        scored = self.scored(batch)
        return F.cross_entropy(logits[scored], self.targets(batch)[scored])


def _drop_pad_columns(t: Tensor, pad_id: int) -> Tensor:
    """`t` without its trailing columns that hold only padding (at least one column kept)."""
    real = (t != pad_id).any(dim=0).nonzero()
    return t[:, : int(real[-1]) + 1] if len(real) else t[:, :1]


def result(name: str, measured: float, threshold: float, passed: bool, failure: str, success: str) -> CheckResult:
    """A CheckResult whose message is `failure` when it failed, `success` otherwise."""
    return CheckResult(name, bool(passed), float(measured), float(threshold), success if passed else failure)
