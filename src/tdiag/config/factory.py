"""A user's model factory named in params.yaml: `model: {arch: custom, factory: ...}`.

The factory is written "<module>:<function>", where <module> is either a Python file
(ending in `.py`), relative to the folder of params.yaml (`models/my_gpt.py:build`), or
a dotted module name (`my_package.my_module:build`) found on `sys.path` with the
params folder in front of it (the user's installed package, or a package beside
params.yaml). This module finds the factory's source file without importing it (the
plan lists it as a dependency of the run's training stage, and its content is part of
the run's digest) and imports the factory when a run builds its model. It does not
load torch; the contract the built model must meet is checked in models/custom.py.

Every problem is a `ConfigError` naming the key (`studies.<study>.runs.<run>.model.factory`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from tdiag.config.errors import ConfigError

_SPEC = re.compile(r"(?P<module>[^:\s]+):(?P<function>[A-Za-z_]\w*)")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
FORMAT = "'path/to/file.py:function' (relative to params.yaml's folder) or 'package.module:function'"


@dataclass(frozen=True)
class Factory:
    module: str
    """A file path ending in `.py`, or a dotted module name."""
    function: str

    @property
    def is_file(self) -> bool:
        return self.module.endswith(".py")


def parse(text: str) -> Factory:
    """The factory named by `text`; a ValueError (reported by pydantic with the key) if it is malformed."""
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} does not name a factory; write {FORMAT}")
    factory = Factory(match["module"], match["function"])
    if not factory.is_file and not _DOTTED.fullmatch(factory.module):
        raise ValueError(f"{factory.module!r} is neither a .py file nor a dotted module name; write {FORMAT}")
    return factory


def source_file(text: str, folder: Path, key: str) -> Path:
    """The file the factory's module is read from, without importing it."""
    factory = parse(text)
    if factory.is_file:
        path = folder / factory.module
        if not path.is_file():
            raise ConfigError(f"{key}: no file {path} (a factory's file is relative to params.yaml's folder)")
        return path
    origin = _module_origin(factory.module, folder)
    if origin is None:
        raise ConfigError(
            f"{key}: no module named {factory.module!r} in {folder} or the installed packages; "
            f"install its package or write {FORMAT}"
        )
    return origin


def source_digest(text: str, folder: Path, key: str) -> str:
    """sha256 of the factory's source file: a change to it retrains the runs that use it."""
    return hashlib.sha256(source_file(text, folder, key).read_bytes()).hexdigest()


def load(text: str, folder: Path, key: str) -> Callable:
    """The factory function, imported now."""
    factory = parse(text)
    path = source_file(text, folder, key)
    try:
        with _on_path(folder):
            if factory.is_file:
                module = _import_file(path)
            else:
                module = importlib.import_module(factory.module)
    except Exception as err:  # the user's module failed as it was imported: say how, in one line
        raise ConfigError(f"{key}: importing {path} failed: {one_line(err)}") from None
    if not hasattr(module, factory.function):
        raise ConfigError(f"{key}: {path} has no function {factory.function!r}")
    function = getattr(module, factory.function)
    if not callable(function):
        raise ConfigError(f"{key}: {factory.function!r} in {path} is a {type(function).__name__}, not a function")
    return function


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """The params folder first on sys.path while a factory's module is found or imported."""
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    importlib.invalidate_caches()  # a module written since the last import must be seen
    try:
        yield
    finally:
        sys.path.remove(entry)


def _module_origin(name: str, folder: Path) -> Optional[Path]:
    """The source file of a dotted module, found without running any of its packages."""
    parts = name.split(".")
    with _on_path(folder):
        try:
            spec = importlib.util.find_spec(parts[0])  # a top-level name imports nothing
        except (ImportError, ValueError):
            return None
        for i in range(1, len(parts)):
            if spec is None or spec.submodule_search_locations is None:
                return None
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), spec.submodule_search_locations)
    if spec is None or not spec.has_location or not spec.origin or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin)


def _import_file(path: Path):
    """The module of a factory's file, imported once per content (an edited file is read anew)."""
    content = path.read_bytes()
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + content).hexdigest()[:16]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"tdiag_factory_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
