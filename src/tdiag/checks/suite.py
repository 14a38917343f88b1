"""The check list per model kind, and the runner."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from tdiag.checks.attention import attention_parameters, attention_parity
from tdiag.checks.core import ENCODER_DECODER, LANGUAGE_MODEL, CheckResult, Subject
from tdiag.checks.isolation import batch_independence, causality, padding_attention, padding_invariance
from tdiag.checks.training import determinism, eval_determinism, gradient_flow, initial_loss, overfit

Check = Callable[[Subject], Optional[CheckResult]]
"""A check: a result, or None where the model does not expose what it needs."""

_COMMON: list[Check] = [gradient_flow, initial_loss, overfit, determinism, attention_parameters, attention_parity]

CHECKS: dict[str, list[Check]] = {
    ENCODER_DECODER: [eval_determinism, causality, padding_invariance, padding_attention, batch_independence, *_COMMON],
    LANGUAGE_MODEL: [eval_determinism, causality, batch_independence, *_COMMON],
}
"""The checks of each model kind, in report order. Padding exists only in the
encoder-decoder's batches: language-model segments are dense. eval_determinism comes
first, for the checks of `COMPARE_EVAL_PASSES`."""

COMPARE_EVAL_PASSES = (causality, padding_invariance, padding_attention, batch_independence)
"""Checks that compare two eval-mode passes: randomness at inference would fail them all
under names of leaks that are not there, so where eval_determinism fails they are not run
(its line says why)."""


def run_checks(subject: Subject) -> list[CheckResult]:
    """Every check that applies to the subject's kind and model, on the first rows of its
    batch (`Subject.small`). Torch's global random state is left as it was."""
    small = subject.small()
    results: list[CheckResult] = []
    with torch.random.fork_rng(devices=[]):
        for check in CHECKS[subject.kind]:
            random_at_inference = any(r.name == eval_determinism.__name__ and not r.passed for r in results)
            if check in COMPARE_EVAL_PASSES and random_at_inference:
                continue
            found = check(small)
            if found is not None:
                results.append(found)
    return results
