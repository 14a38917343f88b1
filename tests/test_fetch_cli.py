"""`tdiag data fetch` as a user meets it: a corrupted mirror file, and no mirror without a network."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tdiag.config import MIRROR_ENV
from tdiag.data import corpora

MIRROR = REPO.parent / "shared" / "data"
WMT14 = corpora.corpus("wmt14")


def fetch(cwd: Path, mirror: str, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != MIRROR_ENV}
    return subprocess.run(
        [sys.executable, "-m", "tdiag", "--params", str(REPO / "params.yaml"), "--set", f"data.mirror={mirror}",
         "data", "fetch", "wmt14", "--out", str(out)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.skipif(not (MIRROR / WMT14.mirror_dir).is_dir(), reason=f"the offline data mirror {MIRROR} is not present")
def test_corrupted_mirror_file_is_refused_in_one_line_and_not_copied(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / WMT14.mirror_dir, mirror / WMT14.mirror_dir)
    bad = mirror / WMT14.mirror_dir / "test-full" / "newstest2014-fren-ref.fr.sgm"
    data = bytearray(bad.read_bytes())
    data[500] ^= 0x01
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    done = fetch(tmp_path, str(mirror), out)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    expected = WMT14.mirror_sums["test-full/newstest2014-fren-ref.fr.sgm"]
    assert str(bad) in lines[0] and "sha256" in lines[0] and expected in lines[0]
    # The good file before it is complete and verified; the bad one, temp files and the
    # source record (written last) are not there.
    assert files_under(out) == ["test-full/newstest2014-fren-src.en.sgm"]


def _network_reachable(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_network_reachable("statmt.org"), reason="this machine resolves statmt.org: it may have a network")
def test_without_mirror_or_network_fetch_fails_in_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    done = fetch(tmp_path, "null", out)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert WMT14.url in lines[0] and "data.mirror" in lines[0] and MIRROR_ENV in lines[0]
    assert files_under(out) == []  # no partial download
