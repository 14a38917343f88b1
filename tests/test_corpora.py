"""Corpus fetching: from the offline mirror, and from a local HTTP server standing in for the network."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tdiag.data import corpora
from tdiag.data.corpora import Checksum, FetchError
from tdiag.errors import UserError

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_mirror = pytest.mark.skipif(
    not (MIRROR / "README.md").is_file(), reason=f"the offline data mirror {MIRROR} is not present"
)


def mirror_sums() -> dict[str, str]:
    """The sha256 table of the mirror's README: relative path -> sum."""
    text = (MIRROR / "README.md").read_text()
    return {m.group(2): m.group(1) for m in re.finditer(r"^([0-9a-f]{64})  (\S+)$", text, flags=re.M)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def patch_corpus(monkeypatch, name: str, **changes) -> corpora.Corpus:
    patched = dataclasses.replace(corpora.CORPORA[name], **changes)
    monkeypatch.setitem(corpora.CORPORA, name, patched)
    return patched


# ------------------------------------------------------------------------ mirror


@needs_mirror
@pytest.mark.parametrize(
    "corpus, mirror_dir, expected",
    [
        ("wikitext2", "wikitext-2-mini", {"wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"}),
        (
            "wmt14",
            "wmt14-newstest",
            {"test-full/newstest2014-fren-src.en.sgm", "test-full/newstest2014-fren-ref.fr.sgm"},
        ),
    ],
)
def test_mirror_gives_the_release_layout_with_the_readme_sums(tmp_path, corpus, mirror_dir, expected):
    out = tmp_path / "out"
    files = corpora.fetch(corpus, out, MIRROR, progress=False)
    assert {str(f.relative_to(out)) for f in files} == expected
    assert files_under(out) == expected  # nothing else: no temp files
    sums = mirror_sums()
    for rel in expected:
        assert sha256(out / rel) == sums[f"{mirror_dir}/{rel}"]


@needs_mirror
def test_corrupted_mirror_file_is_refused_naming_it_and_both_sums(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / "wikitext-2-mini", mirror / "wikitext-2-mini")
    bad = mirror / "wikitext-2-mini" / "wiki.valid.tokens"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(FetchError) as err:
        corpora.fetch("wikitext2", out, mirror, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(bad) in message
    assert mirror_sums()["wikitext-2-mini/wiki.valid.tokens"] in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert "wiki.valid.tokens" not in files_under(out)
    assert not [f for f in files_under(out) if ".tmp" in f]


@needs_mirror
def test_missing_mirror_file_names_the_expected_path(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / "wmt14-newstest", mirror / "wmt14-newstest")
    missing = mirror / "wmt14-newstest" / "test-full" / "newstest2014-fren-ref.fr.sgm"
    missing.unlink()
    out = tmp_path / "out"
    with pytest.raises(FetchError, match=re.escape(str(missing))):
        corpora.fetch("wmt14", out, mirror, progress=False)
    assert files_under(out) == set()


def test_mirror_without_the_corpus_folder_falls_back_to_the_download(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/wikitext-2-v1.zip"  # loopback discard port: nothing listens
    patch_corpus(monkeypatch, "wikitext2", url=url)
    with pytest.raises(FetchError, match=re.escape(url)):
        corpora.fetch("wikitext2", tmp_path / "out", tmp_path / "nowhere", progress=False)
    assert files_under(tmp_path / "out") == set()


def test_training_corpus_mirror_expects_the_archive(tmp_path):
    (tmp_path / "wmt14-training").mkdir()
    with pytest.raises(FetchError) as err:
        corpora.fetch(corpora.WMT14_TRAINING, tmp_path / "out", tmp_path, progress=False)
    assert str(tmp_path / "wmt14-training" / "training-parallel-europarl-v7.tgz") in str(err.value)


def test_unknown_corpus_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown corpus 'ptb'; corpora: wikitext2, wmt14"):
        corpora.fetch("ptb", tmp_path, None, progress=False)


def test_describe_is_a_data_card():
    card = corpora.describe("wikitext2")
    assert "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip" in card
    assert "license: Creative Commons Attribution-ShareAlike 3.0" in card
    assert "offline re-split" in card
    for name in corpora.CORPORA:
        assert corpora.CORPORA[name].url in corpora.describe(name)


# ----------------------------------------------------------------------- network


def test_unreachable_url_is_one_line_naming_url_and_mirror_option(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/wikitext-2-v1.zip"  # loopback discard port: nothing listens
    patch_corpus(monkeypatch, "wikitext2", url=url)
    out = tmp_path / "out"
    with pytest.raises(FetchError) as err:
        corpora.fetch("wikitext2", out, None, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert url in message and "data.mirror" in message and "TDIAG_DATA_MIRROR" in message
    assert files_under(out) == set()


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.payload`, honouring `Range: bytes=N-` when `server.ranges` is set."""

    def do_GET(self):
        server = self.server
        if self.path != server.path:
            self.send_error(404)
            return
        payload, start = server.payload, 0
        wanted = self.headers.get("Range")
        server.range_headers.append(wanted)
        if wanted and server.ranges:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = body[: len(body) // 2] if server.truncate else body
        server.bytes_sent += len(sent)  # counted first: the client may finish reading before write returns
        self.wfile.write(sent)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Start a local HTTP server for a payload: serve(payload, ranges=..., truncate=...) -> (url, server)."""
    servers = []

    def start(payload: bytes, name: str, *, ranges: bool = True, truncate: bool = False):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.payload, server.path, server.ranges, server.truncate = payload, f"/{name}", ranges, truncate
        server.range_headers, server.bytes_sent = [], 0
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


WIKI_TEXT = {split: f" = {split} article = \n the {split} text <unk> .\n" * 200 for split in ("train", "valid", "test")}


def wikitext_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("wikitext-2/", "")
        for split, text in WIKI_TEXT.items():
            zf.writestr(f"wikitext-2/wiki.{split}.tokens", text)
    return buf.getvalue()


def served_wikitext(monkeypatch, serve, payload: bytes, **options):
    url, server = serve(payload, "wikitext-2-v1.zip", **options)
    patch_corpus(monkeypatch, "wikitext2", url=url, checksum=Checksum("md5", hashlib.md5(payload).hexdigest()))
    return url, server


def assert_wikitext_fetched(out: Path, files: list[Path]):
    assert files == [out / f"wiki.{split}.tokens" for split in ("train", "valid", "test")]
    assert files_under(out) == {f.name for f in files}  # the archive and its .part are gone
    for split, text in WIKI_TEXT.items():
        assert (out / f"wiki.{split}.tokens").read_text() == text


def test_download_verifies_and_extracts(tmp_path, monkeypatch, serve):
    payload = wikitext_zip()
    _, server = served_wikitext(monkeypatch, serve, payload)
    out = tmp_path / "out"
    assert_wikitext_fetched(out, corpora.fetch("wikitext2", out, None, progress=False))
    assert server.range_headers == [None]


def test_interrupted_download_resumes_with_a_range_request(tmp_path, monkeypatch, serve):
    payload = wikitext_zip()
    _, server = served_wikitext(monkeypatch, serve, payload)
    out = tmp_path / "out"
    out.mkdir()
    half = len(payload) // 2
    (out / "wikitext-2-v1.zip.part").write_bytes(payload[:half])  # what a killed run leaves
    assert_wikitext_fetched(out, corpora.fetch("wikitext2", out, None, progress=False))
    assert server.range_headers == [f"bytes={half}-"]
    assert server.bytes_sent == len(payload) - half


def test_server_without_range_support_restarts_cleanly(tmp_path, monkeypatch, serve):
    payload = wikitext_zip()
    _, server = served_wikitext(monkeypatch, serve, payload, ranges=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "wikitext-2-v1.zip.part").write_bytes(payload[:100])
    assert_wikitext_fetched(out, corpora.fetch("wikitext2", out, None, progress=False))
    assert server.bytes_sent == len(payload)


def test_part_longer_than_the_file_restarts_cleanly(tmp_path, monkeypatch, serve):
    payload = wikitext_zip()
    _, server = served_wikitext(monkeypatch, serve, payload)
    out = tmp_path / "out"
    out.mkdir()
    (out / "wikitext-2-v1.zip.part").write_bytes(b"x" * (len(payload) + 10))
    assert_wikitext_fetched(out, corpora.fetch("wikitext2", out, None, progress=False))
    assert server.range_headers == [f"bytes={len(payload) + 10}-", None]


def test_checksum_mismatch_deletes_the_partial_file(tmp_path, monkeypatch, serve):
    url, _ = serve(wikitext_zip(), "wikitext-2-v1.zip")
    patch_corpus(monkeypatch, "wikitext2", url=url, checksum=Checksum("md5", "0" * 32))
    out = tmp_path / "out"
    with pytest.raises(FetchError) as err:
        corpora.fetch("wikitext2", out, None, progress=False)
    message = str(err.value)
    assert url in message and "0" * 32 in message and "data.mirror" in message and "\n" not in message
    assert files_under(out) == set()


def test_connection_dropped_mid_transfer_deletes_the_partial_file(tmp_path, monkeypatch, serve):
    url, _ = served_wikitext(monkeypatch, serve, wikitext_zip(), truncate=True)
    out = tmp_path / "out"
    with pytest.raises(FetchError, match=re.escape(url)):
        corpora.fetch("wikitext2", out, None, progress=False)
    assert files_under(out) == set()


@needs_mirror
def test_network_tgz_gives_the_same_layout_as_the_mirror(tmp_path, monkeypatch, serve):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(MIRROR / "wmt14-newstest" / "test-full", arcname="test-full")
        tf.addfile(tarfile.TarInfo("test-full/newstest2014-csen-src.en.sgm"), io.BytesIO(b""))
    payload = buf.getvalue()
    url, _ = serve(payload, "test-full.tgz")
    patch_corpus(monkeypatch, "wmt14", url=url, checksum=Checksum("sha256", hashlib.sha256(payload).hexdigest()))
    from_network = tmp_path / "network"
    from_mirror = tmp_path / "mirror"
    files = corpora.fetch("wmt14", from_network, None, progress=False)
    corpora.fetch("wmt14", from_mirror, MIRROR, progress=False)
    assert files_under(from_network) == files_under(from_mirror) == {str(f.relative_to(from_network)) for f in files}
    for rel in files_under(from_mirror):
        assert sha256(from_network / rel) == sha256(from_mirror / rel)


def test_truncated_archive_is_refused_and_deleted(tmp_path, monkeypatch, serve):
    payload = wikitext_zip()[:-200]  # the central directory is gone; the checksum matches this copy
    served_wikitext(monkeypatch, serve, payload)
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="extracting the archive from http://127.0.0.1"):
        corpora.fetch("wikitext2", out, None, progress=False)
    assert files_under(out) == set()


def test_http_error_names_the_status(tmp_path, monkeypatch, serve):
    url, _ = serve(b"", "wikitext-2-v1.zip")
    patch_corpus(monkeypatch, "wikitext2", url=url.replace("wikitext-2-v1.zip", "missing.zip"))
    with pytest.raises(FetchError, match="HTTP Error 404"):
        corpora.fetch("wikitext2", tmp_path / "out", None, progress=False)
    assert files_under(tmp_path / "out") == set()
