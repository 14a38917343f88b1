"""Atomic writes: a kill mid-write never leaves a file that looks finished."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: some writers (papermill) judge a file by its extension.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=_suffix(path))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prefix(path: Path) -> str:
    return f".{path.stem}."


def _suffix(path: Path) -> str:
    return f".tmp{path.suffix}"


def remove_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files a killed `atomic_path(path)` left beside `path`; returns them.

    Only for a path no other live process is writing (a run's own files, once it holds its run).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix, suffix = _prefix(path), _suffix(path)
    stale = [
        p for p in path.parent.iterdir()
        # mkstemp puts its random part between prefix and suffix: at least one character.
        if p.name.startswith(prefix) and p.name.endswith(suffix) and len(p.name) > len(prefix) + len(suffix)
        and p.is_file()
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
