"""The stage record: one `tdiag` command with its inputs and outputs.

plan.py assembles the pipeline's list of them; the dataset kinds (data/kinds.py) make
their own data stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path("src") / "tdiag"


def stage_name(verb: str, *names: str) -> str:
    """`verb_name_name...` as an identifier: dataset, study and run names may hold '-'
    and '.', which DVC refuses in a stage name (and a rule name is best an identifier)."""
    return "_".join((verb, *(re.sub(r"\W", "_", n) for n in names)))


def source_files(*modules: str) -> tuple[str, ...]:
    """Source files a stage's output depends on, so editing them reruns the stage."""
    return tuple(str(PACKAGE_DIR / m) for m in modules)


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[str, ...]
    """Arguments of the `tdiag` command that runs the stage."""
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...] = ()
    """params.yaml keys the stage reads (DVC tracks them)."""
    metrics: tuple[str, ...] = ()
    """Small JSON outputs DVC shows as metrics (also listed in `outs`)."""
    gpu: bool = False
    priority: int = 0
    """Snakemake's scheduling priority (the study's `priority`; DVC runs stages in order)."""
    fingerprint: str = field(default="", compare=False)
    """Digest of the resolved settings the stage uses: Snakemake reruns a rule when it changes."""
