"""The stage record: one `tdiag` command with its inputs and outputs.

plan.py assembles the pipeline's list of them; the dataset kinds (data/kinds.py) make
their own data stages.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tdiag import paths
from tdiag.digest import json_digest
from tdiag.errors import UserError

PACKAGE_DIR = Path("src") / "tdiag"
TRAINING = "train/loop.py"
"""The module a training stage runs: its imports are the stage's code."""


def stage_name(verb: str, *names: str) -> str:
    """`verb_name_name...` as an identifier: dataset, study and run names may hold '-'
    and '.', which DVC refuses in a stage name (and a rule name is best an identifier)."""
    return "_".join((verb, *(re.sub(r"\W", "_", n) for n in names)))


def source_files(*modules: str) -> tuple[str, ...]:
    """Every source file a stage's command runs: the files of `modules` (paths below
    src/tdiag, e.g. `train/loop.py`) and of each tdiag module they import, directly or
    not, packages' `__init__.py` included. Found by reading the import statements, so a
    stage's code dependencies are derived, never a hand-kept list; editing any of these
    files reruns the stage."""
    return tuple(str(PACKAGE_DIR / rel) for rel in _closure(modules))


def code_digest(*modules: str) -> str:
    """A digest of the contents of `source_files(*modules)`: a finished seed or a
    checkpoint is kept only for the code that made it, as for its configuration."""
    return json_digest({rel: (_SOURCE_ROOT / rel).read_text() for rel in _closure(modules)})


def _closure(modules: tuple[str, ...]) -> list[str]:
    found: set[str] = set()
    for module in modules:
        _collect(_module_name(module), found)
    return sorted(found)


def notebook_modules(notebook: Path) -> tuple[str, ...]:
    """The tdiag modules a notebook's code cells import, as paths for `source_files`."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    names: set[str] = set()
    for name in _imported(ast.parse("\n".join(lines)), package=""):
        _collect(name, names)
    return tuple(sorted(names))


_SOURCE_ROOT = Path(__file__).resolve().parent  # src/tdiag, wherever the project is checked out


def _module_name(rel: str) -> str:
    return ".".join(("tdiag", *Path(rel).with_suffix("").parts)).removesuffix(".__init__")


def _file_of(name: str) -> Optional[str]:
    """The path below src/tdiag of tdiag module `name`, or None (not a tdiag module)."""
    if name != "tdiag" and not name.startswith("tdiag."):
        return None
    return _file_below(_SOURCE_ROOT, name)


@functools.cache
def _file_below(root: Path, name: str) -> Optional[str]:
    """`_file_of`, looked up once per process: the stage list asks for every module's
    file again from each closure it takes (tens of thousands of `stat`s otherwise)."""
    parts = name.split(".")[1:]
    for rel in (Path(*parts, "__init__.py") if parts else Path("__init__.py"), Path(*parts).with_suffix(".py") if parts else None):
        if rel is not None and (root / rel).is_file():
            return rel.as_posix()
    return None


def _collect(name: str, found: set[str]) -> None:
    """Add the file of module `name`, its packages' and those of everything it imports."""
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        rel = _file_of(".".join(parts[:depth]))
        if rel is None or rel in found:
            continue
        found.add(rel)
        package = ".".join(parts[:depth]) if rel.endswith("__init__.py") else ".".join(parts[: depth - 1])
        for imported in _imports_of(rel, package, (_SOURCE_ROOT / rel).stat().st_mtime_ns):
            _collect(imported, found)


@functools.cache
def _imports_of(rel: str, package: str, mtime_ns: int) -> frozenset[str]:
    """`_imported` of one source file, parsed once per version of it: building the stage
    list asks for the closures of a few dozen stages, which share most of their files."""
    return frozenset(_imported(ast.parse((_SOURCE_ROOT / rel).read_text()), package))


_NAMED_ATTRIBUTE = re.compile(r"(tdiag(?:\.\w+)+):\w+")
"""A "module:attribute" string, imported on demand (the dataset kinds' registry)."""


def _imported(tree: ast.AST, package: str) -> set[str]:
    """Module names imported anywhere in `tree` (function bodies too), relative imports
    resolved against `package`; `from m import x` names `m.x` too, in case x is a module;
    and the modules of "tdiag.module:attribute" strings, which are imported by name."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            named = _NAMED_ATTRIBUTE.fullmatch(node.value)
            if named:
                names.add(named.group(1))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@dataclass(frozen=True)
class Code:
    """The source files a stage's command runs (`source_files`), under a name that every
    stage running the same files shares.

    The files are not each a dependency of each stage: 130 stages of about 60 files each
    made dvc.lock 39,000 lines long, which DVC parses several times per command. DVC
    tracks them through one stage per name, `code_<name>` (`tdiag code`), whose output
    lists their SHA-256 digests; a stage depends on that file, which DVC compares by
    content, so an edit reruns that small stage, then exactly the stages whose code it
    changed. Snakemake compares `digest()` as a param instead: a dependency on a file
    rewritten whenever a source file is newer would rerun every stage after `git checkout`.
    """

    name: str
    files: tuple[str, ...]

    def digest(self) -> str:
        """The digest of the files as found from the working folder (`digest_lines`)."""
        return hashlib.sha256(digest_lines(self.files).encode()).hexdigest()[:16]


def digest_lines(files: tuple[str, ...]) -> str:
    """`sha256sum`'s lines for `files` (paths from the working folder): `sha256sum -c` checks them."""
    lines = []
    for name in files:
        try:
            data = Path(name).read_bytes()
        except OSError as err:
            raise UserError(f"cannot read source file {name}: {err.strerror}") from None
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return "".join(lines)


def write_code_digests(name: str, files: tuple[str, ...]) -> Path:
    """`tdiag code NAME FILE...`: the digests of code set `name`, written atomically."""
    from tdiag import atomic

    out = paths.inside(Path("."), paths.code_digests(name))
    atomic.write_text(out, digest_lines(tuple(files)))
    return out


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[str, ...]
    """Arguments of the `tdiag` command that runs the stage."""
    deps: tuple[str, ...]
    """Files the command reads, its source files aside (`code`)."""
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
    gpus: int = 0
    """GPUs the stage's job takes (a training run's `train.devices`, one process each; on
    the CPU, that many processes)."""
    priority: int = 0
    """Snakemake's scheduling priority (the study's `priority`; DVC runs stages in order)."""
    fingerprint: str = field(default="", compare=False)
    """Digest of the resolved settings the stage uses: Snakemake reruns a rule when it changes."""
    code: Optional[Code] = None
    """The source files the command runs."""
    resources: Optional["tdiag.resources.Resources"] = field(default=None, compare=False)
    """What a scheduler gives the job (tdiag.resources), at the resolved scale: unlike the
    rest of the record it depends on the scale, so dvc.yaml never holds it. plan.stages
    sets it on every record. Named, not imported: this module is part of the training
    code (`source_files`), and editing a rule of thumb must not retrain every run."""
