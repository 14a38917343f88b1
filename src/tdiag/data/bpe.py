"""Byte-pair encoding with subword-nmt (Sennrich et al. 2016, Neural Machine Translation of
Rare Words with Subword Units).

The merges are learnt jointly over source and target text (the paper's "joint BPE"), so
names and cognates split the same way on both sides. Subwords follow subword-nmt's
convention: every piece but a word's last ends with `@@`, so `undo` restores the
tokenised text exactly. Learning is deterministic: subword-nmt breaks ties between
equally frequent pairs by the pair itself, and the files are read in the order given.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

from subword_nmt.apply_bpe import BPE
from subword_nmt.learn_bpe import learn_bpe

from tdiag import atomic

SEPARATOR = "@@"
_JOINER = re.compile(rf"{SEPARATOR} |{SEPARATOR}$", flags=re.MULTILINE)


def learn(files: list[Path], codes_out: Path, merges: int, *, min_frequency: int = 2) -> None:
    """Learn `merges` merge operations over the words of all `files` together (joint BPE)."""
    text = io.StringIO("".join(Path(f).read_text(encoding="utf-8") for f in files))
    codes = io.StringIO()
    learn_bpe(text, codes, merges, min_frequency=min_frequency)
    atomic.write_text(codes_out, codes.getvalue())


def _bpe(codes: Path) -> BPE:
    with open(codes, encoding="utf-8") as f:
        return BPE(f, separator=SEPARATOR)


def apply(codes: Path, in_path: Path, out_path: Path) -> None:
    """Segment every line of `in_path` with `codes` into `out_path` (written atomically)."""
    bpe = _bpe(codes)
    with open(in_path, encoding="utf-8") as fin:
        atomic.write_text(out_path, "".join(bpe.process_line(line) for line in fin))


def undo(text: str) -> str:
    """Join subwords back into words: remove every `@@ ` and an `@@` that ends a line."""
    return _JOINER.sub("", text)


def vocabulary(files: list[Path]) -> list[tuple[str, int]]:
    """Every whitespace-separated token of `files` with its count, most frequent first
    (ties in token order, so the list is the same on every run)."""
    counts: Counter[str] = Counter()
    for f in files:
        with open(f, encoding="utf-8") as fin:
            for line in fin:
                counts.update(line.split())
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
