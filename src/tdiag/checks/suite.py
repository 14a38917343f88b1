"""The check list per model kind, and the runner."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from tdiag.checks.attention import attention_parameters, attention_parity
from tdiag.checks.core import ENCODER_DECODER, LANGUAGE_MODEL, CheckResult, Subject
from tdiag.checks.isolation import batch_independence, causality, padding_attention, padding_invariance
from tdiag.checks.training import determinism, gradient_flow, initial_loss, overfit

Check = Callable[[Subject], Optional[CheckResult]]
"""A check: a result, or None where the model does not expose what it needs."""

_COMMON: list[Check] = [gradient_flow, initial_loss, overfit, determinism, attention_parameters, attention_parity]

CHECKS: dict[str, list[Check]] = {
    ENCODER_DECODER: [causality, padding_invariance, padding_attention, batch_independence, *_COMMON],
    LANGUAGE_MODEL: [causality, batch_independence, *_COMMON],
}
"""The checks of each model kind, in report order. Padding exists only in the
encoder-decoder's batches: language-model segments are dense."""


def run_checks(subject: Subject) -> list[CheckResult]:
    """Every check that applies to the subject's kind and model, on the first rows of its
    batch (`Subject.small`). Torch's global random state is left as it was."""
    small = subject.small()
    with torch.random.fork_rng(devices=[]):
        results = [check(small) for check in CHECKS[subject.kind]]
    return [r for r in results if r is not None]
