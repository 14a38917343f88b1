"""Atomic writes: all or nothing, no temp files left behind, ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tdiag import atomic


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_success_leaves_only_the_target(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"b": 1, "a": [1, 2]})
    assert _names(tmp_path) == ["out.json"]
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}


def test_success_replaces_existing_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["out.txt"]


def test_parent_folders_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "rows.jsonl"
    atomic.write_jsonl(target, [{"x": 1}, {"x": 2}])
    assert target.read_text() == '{"x": 1}\n{"x": 2}\n'


def test_temp_file_sits_beside_the_target_and_keeps_its_suffix(tmp_path):
    target = tmp_path / "page.html"
    with atomic.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".html" and tmp != target
        assert not target.exists()
        tmp.write_text("<p>")
    assert target.read_text() == "<p>"
    assert _names(tmp_path) == ["page.html"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_keeps_the_old_target_and_no_temp_file(tmp_path, error):
    target = tmp_path / "metrics.json"
    target.write_text("finished before")
    with pytest.raises(error):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half writ")
            raise error()
    assert target.read_text() == "finished before"
    assert _names(tmp_path) == ["metrics.json"]


def test_failure_without_a_target_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("partial")
            raise RuntimeError
    assert _names(tmp_path) == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_final_mode_follows_the_umask(tmp_path, umask, mask, mode):
    # mkstemp alone would give 0600 whatever the umask
    umask(mask)
    target = tmp_path / "out.txt"
    atomic.write_text(target, "x")
    assert stat.S_IMODE(target.stat().st_mode) == mode
