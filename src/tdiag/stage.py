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
    """Configuration keys the stage reads, as key paths of params.yaml's base sections.
    DVC tracks each where the file has it: there, and under `scales.smoke.` / `scales.full.`
    (`plan.dvc_params`), so a change reruns only the stages that read the key."""
    metrics: tuple[str, ...] = ()
    """Small JSON outputs DVC shows as metrics (also listed in `outs`)."""
    folder: str = ""
    """A folder of working files that holds `outs` (a run's seed folders, which resume
    reads): DVC tracks the folder whole instead of the files, and keeps it across reruns."""
    gpu: bool = False
    priority: int = 0
    """Snakemake's scheduling priority (the study's `priority`; DVC runs stages in order)."""
    fingerprint: str = field(default="", compare=False)
    """Digest of the resolved settings the stage uses: Snakemake reruns a rule when it changes."""
