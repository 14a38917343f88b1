"""The `data fetch` stage: a corpus's files under resources/<corpus>/, and a record of
where they came from (the mirror or the canonical URL), written last."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from tdiag import atomic, paths
from tdiag.data import corpora
from tdiag.errors import UserError


def fetch_corpus(name: str, out: Path | None, mirror: Path | None, root: Path = Path(".")) -> list[Path]:
    info = corpora.corpus(name)
    out = out if out is not None else root / paths.corpus_dir(name)
    from_mirror = corpora.mirror_holds(name, mirror)
    files = corpora.fetch(name, out, mirror)
    source = {
        "corpus": name,
        "title": info.title,
        "origin": "mirror" if from_mirror else "download",
        "mirror": str(mirror) if from_mirror else None,
        "url": info.url,
        "checksum": f"{info.checksum.kind}:{info.checksum.value}",
        "note": info.mirror_note if from_mirror else "",
        "license": info.license,
        "citation": info.citation,
        "files": [str(p.relative_to(out)) for p in files],
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic.write_json(out / paths.corpus_source(name).name, source)
    print(f"{name}: {len(files)} files in {out} ({source['origin']})")
    return files


def fetched(corpus: str, root: Path = Path(".")) -> tuple[Path, dict]:
    """The folder `data fetch <corpus>` filled and its source record; refused, naming the
    command to run, when the corpus has not been fetched (its source.json comes last)."""
    source = root / paths.corpus_source(corpus)
    if not source.is_file():
        raise UserError(f"corpus '{corpus}' is not fetched ({source} is missing); run `tdiag data fetch {corpus}`")
    return root / paths.corpus_dir(corpus), json.loads(source.read_text(encoding="utf-8"))
