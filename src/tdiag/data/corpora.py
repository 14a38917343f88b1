"""The real corpora: canonical sources, checksums, the offline mirror, download and extraction.

`fetch(corpus, out, mirror)` leaves the same files in `out` whichever way it gets them:

- from a mirror folder (`data.mirror` in params.yaml or TDIAG_DATA_MIRROR), laid out like
  `../shared/data`: each file is copied and checked against its sha256;
- from the network: the published archive is downloaded with urllib (resuming a `.part`
  file left by a killed run with an HTTP Range request), checked against its published
  checksum, and the wanted members are extracted.

Every final file is written atomically. A failed download deletes its partial file and
raises `FetchError` (a UserError: the CLI prints one line and exits 2) naming the URL
and how to use a mirror. A `.part` file is kept only when the process is interrupted
(Ctrl-C, kill), so that the next run resumes it.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from tdiag import atomic
from tdiag.config import MIRROR_ENV
from tdiag.errors import UserError

CHUNK = 1 << 20
TIMEOUT_S = 60
MIRROR_HINT = (
    f"to use a local copy, set data.mirror in params.yaml or the {MIRROR_ENV} variable "
    "to a folder laid out like ../shared/data"
)


class FetchError(UserError):
    """A corpus could not be fetched or verified; the message is one line for the user."""


@dataclass(frozen=True)
class Checksum:
    kind: Literal["md5", "sha256"]
    value: str

    def of(self, path: Path) -> str:
        digest = hashlib.new(self.kind)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


@dataclass(frozen=True)
class Corpus:
    """One published archive and the files taken from it.

    `members` maps a path inside the archive to its final path under `out`. The mirror
    holds either the final files under `mirror_dir` with their sha256 (`mirror_sums`),
    or, when `mirror_sums` is empty, the archive itself under `mirror_dir`.
    """

    name: str
    title: str
    url: str
    checksum: Checksum
    checksum_source: str
    members: dict[str, str]
    mirror_dir: str
    license: str
    citation: str
    mirror_sums: dict[str, str] = field(default_factory=dict)
    mirror_note: str = ""

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def outputs(self, out: Path) -> list[Path]:
        return [out / rel for rel in self.members.values()]


_WMT14_FINDINGS = (
    "Bojar et al. 2014, Findings of the 2014 Workshop on Statistical Machine Translation, WMT14"
)

CORPORA: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in (
        Corpus(
            name="wikitext2",
            title="WikiText-2 (word level, v1)",
            url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
            checksum=Checksum("sha256", "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c"),
            checksum_source=(
                "huggingface/datasets datasets/wikitext/dataset_infos.json (download_checksums, 4,475,746 bytes); "
                "torchtext's md5 for the same file is 542ccefacc6c27f945fb54453812b3cd"
            ),
            members={f"wikitext-2/wiki.{split}.tokens": f"wiki.{split}.tokens" for split in ("train", "valid", "test")},
            mirror_dir="wikitext-2-mini",
            # The mirror is a re-split of the official valid/test files (../shared/data/README.md),
            # so its sums are its own, not those of the release.
            mirror_sums={
                "wiki.train.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                "wiki.valid.tokens": "2c432cb99006b9d132623600d3e9f3ab30c6b1036a25c66d963f1dfa1ecad372",
                "wiki.test.tokens": "1f8febb1ffd7d4f5ba8bd91633861d419ac1744314a4e42d676593e91ad3e2d7",
            },
            mirror_note=(
                "the offline mirror is a re-split of the official valid and test files: "
                "report it as 'WikiText-2 (offline re-split)', never as WikiText-2 results"
            ),
            license="Creative Commons Attribution-ShareAlike 3.0 (CC BY-SA 3.0)",
            citation="Merity, Xiong, Bradbury, Socher 2016, Pointer Sentinel Mixture Models, arXiv:1609.07843",
        ),
        Corpus(
            name="wmt14",
            title="WMT14 English-French newstest2014 (test-full)",
            url="https://statmt.org/wmt14/test-full.tgz",
            checksum=Checksum("md5", "a8cd784e006feb32ac6f3d9ec7eb389a"),
            # No sha256 of this archive is published (sacrebleu and WMT list md5 only);
            # the files it yields are also checked by sha256 when they come from the mirror.
            checksum_source="sacrebleu 2.6.0 sacrebleu/dataset/__init__.py, test set 'wmt14/full'",
            members={
                "test-full/newstest2014-fren-src.en.sgm": "test-full/newstest2014-fren-src.en.sgm",
                "test-full/newstest2014-fren-ref.fr.sgm": "test-full/newstest2014-fren-ref.fr.sgm",
            },
            mirror_dir="wmt14-newstest",
            mirror_sums={
                "test-full/newstest2014-fren-src.en.sgm": "5521ed9b1d07763c7e8d7ddfc0fda269cd114612a6283bd3836979ea4dd10a26",
                "test-full/newstest2014-fren-ref.fr.sgm": "c57025c8a338c642fe3ad0206ddc75d258a5584e1d470b75f37af2fb666d7e93",
            },
            license="released by WMT14 for research; terms at https://www.statmt.org/wmt14/translation-task.html",
            citation=_WMT14_FINDINGS,
        ),
        # The official WMT14 en-fr training corpora (https://www.statmt.org/wmt14/translation-task.html);
        # Europarl v7 is the default (WMT14_TRAINING). Neither has a mirror copy in ../shared/data:
        # a mirror supplies the archive itself under `mirror_dir`, checked against the same sum.
        Corpus(
            name="wmt14-europarl-v7",
            title="Europarl v7 French-English (WMT14 training data)",
            url="https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            checksum=Checksum("sha256", "0224c7c710c8a063dfd893b0cc0830202d61f4c75c17eb8e31836103d27d96e7"),
            checksum_source="tensorflow/datasets tensorflow_datasets/url_checksums/wmt14_translate.txt",
            members={f"training/europarl-v7.fr-en.{lang}": f"training/europarl-v7.fr-en.{lang}" for lang in ("en", "fr")},
            mirror_dir="wmt14-training",
            license="terms at https://www.statmt.org/europarl/ (the page asks users to cite Koehn 2005)",
            citation="Koehn 2005, Europarl: A Parallel Corpus for Statistical Machine Translation, MT Summit",
        ),
        Corpus(
            name="wmt14-news-commentary-v9",
            title="News Commentary v9 French-English (WMT14 training data)",
            url="https://www.statmt.org/wmt14/training-parallel-nc-v9.tgz",
            checksum=Checksum("sha256", "cb8953f292298e6877ae433c98912b927cb0766b303f4540512ddd286c748485"),
            checksum_source="tensorflow/datasets tensorflow_datasets/url_checksums/wmt14_translate.txt",
            members={
                f"training/news-commentary-v9.fr-en.{lang}": f"training/news-commentary-v9.fr-en.{lang}"
                for lang in ("en", "fr")
            },
            mirror_dir="wmt14-training",
            license="released by WMT14 for research; terms at https://www.statmt.org/wmt14/translation-task.html",
            citation=_WMT14_FINDINGS,
        ),
    )
}

WMT14_TRAINING = "wmt14-europarl-v7"
"""The official WMT14 en-fr training corpus used when a full-scale study trains on one."""


def corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise FetchError(f"unknown corpus {name!r}; corpora: {', '.join(CORPORA)}")
    return CORPORA[name]


def describe(name: str) -> str:
    """A data card: what the corpus is, where it comes from, how it is checked, its license."""
    c = corpus(name)
    lines = [
        f"# {c.title}",
        f"- source: {c.url} ({c.checksum.kind} {c.checksum.value}, from {c.checksum_source})",
        f"- files: {', '.join(c.members.values())}",
        f"- license: {c.license}",
        f"- cite: {c.citation}",
    ]
    if c.mirror_sums:
        lines.append(f"- offline mirror: <mirror>/{c.mirror_dir}/ (sha256 per file)")
    else:
        lines.append(f"- offline mirror: <mirror>/{c.mirror_dir}/{c.archive} (the archive itself)")
    if c.mirror_note:
        lines.append(f"- note: {c.mirror_note}")
    return "\n".join(lines) + "\n"


def mirror_holds(corpus_name: str, mirror: Path | None) -> bool:
    """Whether `fetch` takes this corpus from the mirror. The mirror is tried first
    (DESIGN.md): a mirror without the corpus's folder falls back to the download; a
    folder that is there but incomplete or corrupt is refused, never bypassed."""
    return mirror is not None and (Path(mirror) / corpus(corpus_name).mirror_dir).is_dir()


def fetch(corpus_name: str, out: Path, mirror: Path | None, *, progress: bool = True) -> list[Path]:
    """Put the corpus's final files under `out` (from `mirror` when given) and return their paths."""
    c = corpus(corpus_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if mirror_holds(corpus_name, mirror):
        return _from_mirror(c, out, Path(mirror))
    if mirror is not None:
        print(f"{corpus_name}: mirror {mirror} has no {c.mirror_dir}/ folder; downloading {c.url}")
    part = out / f"{c.archive}.part"
    _download(c, part, progress)
    try:
        files = _extract(c, part, out, origin=c.url, hint=MIRROR_HINT)
    except Exception:
        part.unlink(missing_ok=True)
        raise
    part.unlink()
    return files


# ------------------------------------------------------------------------ mirror


def _from_mirror(c: Corpus, out: Path, mirror: Path) -> list[Path]:
    folder = mirror / c.mirror_dir
    if not c.mirror_sums:
        archive = folder / c.archive
        _require(archive, mirror, c)
        actual = c.checksum.of(archive)
        if actual != c.checksum.value:
            raise FetchError(
                f"mirror file {archive} has {c.checksum.kind} {actual}, expected {c.checksum.value}; "
                "replace it with a good copy"
            )
        return _extract(c, archive, out, origin=str(archive), hint="replace it with a good copy")
    for rel in c.mirror_sums:
        _require(folder / rel, mirror, c)
    for rel, expected in c.mirror_sums.items():
        _copy_verified(folder / rel, out / rel, expected)
    return c.outputs(out)


def _require(path: Path, mirror: Path, c: Corpus) -> None:
    if not path.is_file():
        raise FetchError(
            f"mirror {mirror} has no {path} (corpus '{c.name}'); add the file, or unset data.mirror "
            f"and {MIRROR_ENV} to download {c.url}"
        )


def _copy_verified(src: Path, dest: Path, expected: str) -> None:
    """Copy `src` to `dest` atomically, refusing it unless its sha256 is `expected`."""
    digest = hashlib.sha256()
    with atomic.atomic_path(dest) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
        if digest.hexdigest() != expected:
            raise FetchError(
                f"mirror file {src} has sha256 {digest.hexdigest()}, expected {expected}; replace it with a good copy"
            )


# ---------------------------------------------------------------------- download


def _download(c: Corpus, part: Path, progress: bool) -> None:
    """Download `c.url` into `part` and verify it; on failure delete `part` and raise FetchError."""
    try:
        if not (part.is_file() and c.checksum.of(part) == c.checksum.value):
            _transfer(c.url, part, progress)
            actual = c.checksum.of(part)
            if actual != c.checksum.value:
                raise FetchError(
                    f"download of {c.url} failed: its {c.checksum.kind} is {actual}, expected {c.checksum.value}; "
                    f"{MIRROR_HINT}"
                )
    except FetchError:
        part.unlink(missing_ok=True)
        raise
    except (URLError, http.client.HTTPException, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        raise FetchError(f"download of {c.url} failed ({_one_line(err)}); {MIRROR_HINT}") from None


def _transfer(url: str, part: Path, progress: bool) -> None:
    """Fetch `url` into `part`, continuing an existing `part` with a Range request when the
    server honours it and starting over otherwise."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "tdiag"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as err:
        if err.code == 416 and offset:  # the part is as long as the file or longer: start over
            part.unlink()
            return _transfer(url, part, progress)
        raise
    with response:
        resumed = bool(offset) and response.status == 206 and _range_start(response) == offset
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = 0
        with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
            disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if length is not None and received != int(length):
        raise OSError(f"connection closed after {received} of {length} bytes")


def _range_start(response) -> int | None:
    """First byte of a 206 answer, from `Content-Range: bytes START-END/SIZE`."""
    value = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    start = spec.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _one_line(err: BaseException) -> str:
    reason = err if isinstance(err, HTTPError) else getattr(err, "reason", None) or err
    return " ".join(str(reason).split()) or type(err).__name__


# --------------------------------------------------------------------- extraction


def _extract(c: Corpus, archive: Path, out: Path, *, origin: str, hint: str) -> list[Path]:
    """Write the archive's wanted members under `out`, each atomically; a damaged archive is a FetchError."""
    try:
        if c.archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                names = set(zf.namelist())
                for member, rel in c.members.items():
                    _check_member(member, names, origin)
                    with zf.open(member) as fin:
                        _write_stream(fin, out / rel)
        else:
            with tarfile.open(archive, "r:*") as tf:
                wanted = dict(c.members)
                for info in tf:
                    if info.name in wanted and info.isfile():
                        with tf.extractfile(info) as fin:
                            _write_stream(fin, out / wanted.pop(info.name))
                for member in wanted:
                    _check_member(member, set(), origin)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise FetchError(f"extracting the archive from {origin} failed ({_one_line(err)}); {hint}") from None
    return c.outputs(out)


def _check_member(member: str, names: set[str], origin: str) -> None:
    if member not in names:
        raise FetchError(f"archive from {origin} has no member {member}")


def _write_stream(fin: IO[bytes], dest: Path) -> None:
    with atomic.atomic_path(dest) as tmp, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
