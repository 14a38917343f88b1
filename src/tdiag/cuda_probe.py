"""Whether this machine has a usable CUDA device: what `scale: auto` follows.

Every `tdiag` command loads the configuration, and so resolves `scale: auto`, but most
of them (data, BPE, collect, report, validate, stages, and Snakemake's own process)
never touch torch, whose import costs about 2 s of CPU here. A CPU-only build of
torch cannot see a GPU, and says so in its `version.py` without being imported; only
a build for CUDA (or ROCm, which torch also reports as CUDA) is asked.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

_NO_GPU_BUILD = re.compile(r"^(cuda|hip)\s*(?::[^=]*)?=\s*None\s*$", re.MULTILINE)


def cuda_available() -> bool:
    if not torch_may_see_a_gpu(torch_version_text()):
        return False
    import torch

    return torch.cuda.is_available()


def torch_may_see_a_gpu(version_text: str | None) -> bool:
    """False only when torch's version.py (its text) says it was built for neither
    CUDA nor ROCm; an unreadable or unfamiliar file leaves the answer to torch."""
    if version_text is None:
        return True
    return len({m.group(1) for m in _NO_GPU_BUILD.finditer(version_text)}) < 2


def torch_version_text() -> str | None:
    """The text of the installed torch's version.py, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None
