"""Joint BPE with subword-nmt on a slice of newstest2014: learn, apply, undo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdiag.data import bpe, wmt14

NEWSTEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "wmt14-newstest"
pytestmark = pytest.mark.skipif(
    not (NEWSTEST / wmt14.SOURCE).is_file(), reason=f"the offline data mirror {NEWSTEST.parent} is not present"
)

MERGES = 200


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """The first 300 newstest2014 pairs, tokenised, one file per language, with joint codes."""
    folder = tmp_path_factory.mktemp("bpe")
    pairs = wmt14.tokenize_pairs(wmt14.newstest2014(NEWSTEST)[:300])
    files = {"en": folder / "train.en", "fr": folder / "train.fr"}
    files["en"].write_text("".join(p.src + "\n" for p in pairs), encoding="utf-8")
    files["fr"].write_text("".join(p.tgt + "\n" for p in pairs), encoding="utf-8")
    files["codes"] = folder / "codes"
    bpe.learn([files["en"], files["fr"]], files["codes"], MERGES)
    return files


def merges(codes: Path) -> list[str]:
    lines = codes.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version")
    return [line.replace(" ", "") for line in lines[1:]]


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_apply_then_undo_gives_back_the_tokenised_text(corpus, tmp_path, lang):
    out = tmp_path / f"train.bpe.{lang}"
    bpe.apply(corpus["codes"], corpus[lang], out)
    segmented = out.read_text(encoding="utf-8")
    original = corpus[lang].read_text(encoding="utf-8")
    assert "@@ " in segmented
    assert segmented.count("\n") == original.count("\n")
    assert bpe.undo(segmented) == original


def test_codes_are_joint_over_both_languages(corpus):
    learnt = merges(corpus["codes"])
    assert len(learnt) == MERGES
    assert "the</w>" in learnt  # English
    assert any(ch in m for m in learnt for ch in "éèàç")  # French


def test_learning_is_deterministic(corpus, tmp_path):
    again = tmp_path / "codes"
    bpe.learn([corpus["en"], corpus["fr"]], again, MERGES)
    assert again.read_bytes() == corpus["codes"].read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temp file left


def test_undo_removes_separators_and_a_trailing_joiner():
    assert bpe.undo("un@@ believ@@ able news\nfi@@ sh@@") == "unbelievable news\nfish"


def test_vocabulary_counts_tokens_most_frequent_first(corpus):
    vocab = bpe.vocabulary([corpus["en"], corpus["fr"]])
    text = corpus["en"].read_text(encoding="utf-8") + corpus["fr"].read_text(encoding="utf-8")
    counts = dict(vocab)
    assert sum(counts.values()) == len(text.split())
    assert counts["the"] == text.split().count("the")
    assert [c for _, c in vocab] == sorted(counts.values(), reverse=True)
    assert vocab == bpe.vocabulary([corpus["en"], corpus["fr"]])
