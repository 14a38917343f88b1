"""One digest for every "has this changed" question: a run's configuration (checkpoints
and finished seeds are kept only for the same one) and a stage's resolved settings
(Snakemake reruns a rule when it changes)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def json_digest(obj: Any) -> str:
    """16 hex digits of the sha256 of `obj` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
