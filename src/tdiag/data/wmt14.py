"""WMT14 en-fr: read newstest2014's SGML, align source and reference, tokenise, draw subsets.

The WMT "SGML" is not well-formed XML (newstest2014 holds raw `&` as in `S&P`), so it is
read line by line, as sacrebleu does, and only XML's own entities (`&amp;`, `&lt;`,
`&gt;`, `&quot;`, `&apos;`, numeric references) are unescaped. Tokenisation is the Moses
pipeline (punctuation normalisation, then the tokenizer) through sacremoses, the usual
preprocessing before BPE (Sennrich et al. 2016, Neural Machine Translation of Rare Words
with Subword Units).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer

from tdiag.config import ConfigError
from tdiag.errors import UserError

SOURCE = "test-full/newstest2014-fren-src.en.sgm"
REFERENCE = "test-full/newstest2014-fren-ref.fr.sgm"
SRC_LANG, TGT_LANG = "en", "fr"

_DOC = re.compile(r"<doc\b[^>]*?\bdocid=\"([^\"]*)\"")
_SEG = re.compile(r"<seg\b[^>]*?\bid=\"?([^\"\s>]+)\"?[^>]*>(.*)</seg>")
_ENTITY = re.compile(r"&(amp|lt|gt|quot|apos|#[0-9]+|#[xX][0-9a-fA-F]+);")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


class SGMLError(UserError):
    """A WMT SGML file that cannot be read or aligned: one line naming the file, doc and seg."""


class Segment(NamedTuple):
    docid: str
    seg: str
    text: str


class Pair(NamedTuple):
    docid: str
    seg: str
    src: str
    tgt: str


def unescape(text: str) -> str:
    """Undo XML escaping only; a bare `&` (as in `S&P`) stays as it is."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("#"):
            return chr(int(name[2:], 16) if name[1] in "xX" else int(name[1:]))
        return _NAMED[name]

    return _ENTITY.sub(replace, text)


def read_sgml(path: Path) -> list[Segment]:
    """The `<seg>`s of a WMT SGML file, in file order, each with its document id."""
    segments: list[Segment] = []
    seen: set[tuple[str, str]] = set()
    docid = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if doc := _DOC.search(line):
                docid = doc.group(1)
            elif line.lstrip().startswith("</doc"):
                docid = None
            elif seg := _SEG.search(line):
                if docid is None:
                    raise SGMLError(f"{path} line {lineno}: <seg id=\"{seg.group(1)}\"> outside a <doc>")
                key = (docid, seg.group(1))
                if key in seen:
                    raise SGMLError(f"{path} line {lineno}: doc '{docid}' repeats seg id {seg.group(1)}")
                seen.add(key)
                segments.append(Segment(docid, seg.group(1), unescape(seg.group(2)).strip()))
    if not segments:
        raise SGMLError(f"{path}: no <seg> elements found")
    return segments


def align(
    source: list[Segment], reference: list[Segment], *, names: tuple[str, str] = ("source", "reference")
) -> list[Pair]:
    """Pair segments by (docid, seg id), in source order; any doc or seg on one side only is an error."""
    refs = {(s.docid, s.seg): s.text for s in reference}
    src_keys = {(s.docid, s.seg) for s in source}
    for keys, other, (here, there) in ((src_keys, refs, names), (set(refs), src_keys, names[::-1])):
        missing = [k for k in keys if k not in other]
        if missing:
            docid, seg = min(missing)
            other_docs = {d for d, _ in other}
            what = f"doc '{docid}'" if docid not in other_docs else f"doc '{docid}' seg id {seg}"
            raise SGMLError(
                f"{here} and {there} do not align: {what} is in the {here} only "
                f"({len(missing)} segment(s) unmatched)"
            )
    return [Pair(s.docid, s.seg, s.text, refs[(s.docid, s.seg)]) for s in source]


def load_pairs(source: Path, reference: Path) -> list[Pair]:
    """Aligned (English source, French reference) pairs of two SGML files."""
    return align(read_sgml(source), read_sgml(reference), names=(str(source), str(reference)))


def newstest2014(folder: Path) -> list[Pair]:
    """newstest2014 en-fr from a folder laid out as corpora.fetch("wmt14", folder, ...) leaves it."""
    return load_pairs(Path(folder) / SOURCE, Path(folder) / REFERENCE)


# ------------------------------------------------------------------ tokenisation


@lru_cache(maxsize=None)
def _moses(lang: str) -> tuple[MosesPunctNormalizer, MosesTokenizer, MosesDetokenizer]:
    return MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang), MosesDetokenizer(lang=lang)


def tokenize(text: str, lang: str) -> str:
    """Moses punctuation normalisation then tokenisation; tokens joined by single spaces.

    escape=False keeps `&`, `<`, `"` as they are: the text never goes back to a Moses
    tool that needs its escaping, and BPE and BLEU see the real characters."""
    normalizer, tokenizer, _ = _moses(lang)
    return tokenizer.tokenize(normalizer.normalize(text), escape=False, return_str=True)


def detokenize(text: str, lang: str) -> str:
    """The inverse of `tokenize` (up to its punctuation normalisation), for BLEU on real text."""
    return _moses(lang)[2].detokenize(text.split(), return_str=True, unescape=False)


def tokenize_pairs(pairs: list[Pair], src_lang: str = SRC_LANG, tgt_lang: str = TGT_LANG) -> list[Pair]:
    return [p._replace(src=tokenize(p.src, src_lang), tgt=tokenize(p.tgt, tgt_lang)) for p in pairs]


# ----------------------------------------------------------------------- subsets


def subsets(pairs: list[Pair], sizes: dict[str, int], seed: int) -> dict[str, list[Pair]]:
    """Seeded, disjoint subsets, e.g. sizes={"train": 1024, "valid": 64, "test": 64}.

    One seeded permutation of all the pair indices is cut in the order of `sizes`, so no
    pair is in two subsets, the same seed and sizes always give the same subsets, and a
    subset depends only on the sizes listed before it (with held-out subsets listed first,
    changing the training size leaves them as they are).
    """
    for name, size in sizes.items():
        if size < 0:
            raise ConfigError(f"subset '{name}' has a negative size ({size})")
    wanted = sum(sizes.values())
    if wanted > len(pairs):
        listed = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise ConfigError(f"subsets {listed} need {wanted} pairs but the corpus has only {len(pairs)}")
    order = random.Random(seed).sample(range(len(pairs)), len(pairs))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = [pairs[i] for i in order[start : start + size]]
        start += size
    return out
