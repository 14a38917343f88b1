"""Pass/fail checks of a model's wiring, each with the number it measured (issue #16):
causality, padding, batch independence, gradient flow, loss at init, fitting one batch,
determinism, and attention against the paper and torch's reference.

`run_checks(Subject(...))` runs those that apply to a model kind (core.py describes the
two calling contracts); `tdiag check <study> <run>` runs them on a configured run.
"""

from tdiag.checks.core import ENCODER_DECODER, LANGUAGE_MODEL, CheckResult, Subject
from tdiag.checks.suite import CHECKS, run_checks

__all__ = ["CHECKS", "ENCODER_DECODER", "LANGUAGE_MODEL", "CheckResult", "Subject", "run_checks"]
