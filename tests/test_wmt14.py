"""WMT14 SGML reading, alignment, tokenisation and subsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdiag.config import ConfigError
from tdiag.data import wmt14
from tdiag.data.wmt14 import Pair, SGMLError

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"
NEWSTEST = MIRROR / "wmt14-newstest"
needs_mirror = pytest.mark.skipif(
    not (NEWSTEST / wmt14.SOURCE).is_file(), reason=f"the offline data mirror {MIRROR} is not present"
)

SRC = """<srcset setid="tiny" srclang="any">
<doc docid="a-1" genre="news" origlang="en">
<seg id="1">Fish &amp; chips, &quot;hot&quot;.</seg>
<seg id="2">It&#39;s S&P&#x27;s &lt;tag&gt; day.</seg>
</doc>
<doc docid="b-2" genre="news" origlang="fr">
<seg id="1">Second document.</seg>
</doc>
</srcset>
"""

REF = """<refset trglang="fr" setid="tiny" srclang="any">
<doc sysid="ref" docid="b-2" genre="news" origlang="fr">
<seg id="1">Deuxième document.</seg>
</doc>
<doc sysid="ref" docid="a-1" genre="news" origlang="en">
<seg id="2">C&apos;est le jour de S&P.</seg>
<seg id="1">Poisson &amp; frites.</seg>
</doc>
</refset>
"""


def write(folder: Path, src: str, ref: str) -> tuple[Path, Path]:
    (folder / "src.sgm").write_text(src, encoding="utf-8")
    (folder / "ref.sgm").write_text(ref, encoding="utf-8")
    return folder / "src.sgm", folder / "ref.sgm"


def test_sgml_pairs_are_aligned_by_doc_and_seg_id_and_unescaped(tmp_path):
    pairs = wmt14.load_pairs(*write(tmp_path, SRC, REF))
    assert pairs == [
        Pair("a-1", "1", 'Fish & chips, "hot".', "Poisson & frites."),
        Pair("a-1", "2", "It's S&P's <tag> day.", "C'est le jour de S&P."),
        Pair("b-2", "1", "Second document.", "Deuxième document."),
    ]


def test_mismatched_seg_id_is_an_error_naming_doc_and_seg(tmp_path):
    with pytest.raises(SGMLError, match=r"doc 'a-1' seg id 2 is in the .*src.sgm only"):
        wmt14.load_pairs(*write(tmp_path, SRC, REF.replace('<seg id="2">', '<seg id="3">')))


def test_missing_document_is_an_error_naming_it(tmp_path):
    ref = REF.replace('docid="b-2"', 'docid="c-3"')
    with pytest.raises(SGMLError, match=r"doc 'b-2' is in the .*src.sgm only"):
        wmt14.load_pairs(*write(tmp_path, SRC, ref))


def test_repeated_seg_id_is_an_error(tmp_path):
    src = SRC.replace('<seg id="2">', '<seg id="1">')
    with pytest.raises(SGMLError, match=r"src.sgm line 4: doc 'a-1' repeats seg id 1"):
        wmt14.load_pairs(*write(tmp_path, src, REF))


@needs_mirror
def test_newstest2014_from_the_mirror():
    pairs = wmt14.newstest2014(NEWSTEST)
    assert len(pairs) == 3003
    assert len({p.docid for p in pairs}) == 176
    assert pairs[0] == Pair(
        "1009-lemondefr", "1", "Spectacular Wingsuit Jump Over Bogota",
        'Spectaculaire saut en "wingsuit" au-dessus de Bogota',
    )
    assert any("S&P" in p.tgt for p in pairs)  # raw ampersands survive


PAIRS = [Pair(f"d{i // 10}", str(i % 10), f"source {i}", f"cible {i}") for i in range(300)]


def test_subsets_are_seeded_disjoint_and_sized():
    sizes = {"train": 200, "valid": 40, "test": 50}
    drawn = wmt14.subsets(PAIRS, sizes, seed=3)
    assert {name: len(part) for name, part in drawn.items()} == sizes
    keys = [{(p.docid, p.seg) for p in part} for part in drawn.values()]
    assert sum(len(k) for k in keys) == len(set().union(*keys)) == 290
    assert drawn == wmt14.subsets(PAIRS, sizes, seed=3)
    assert drawn != wmt14.subsets(PAIRS, sizes, seed=4)


def test_subsets_larger_than_the_corpus_are_refused():
    with pytest.raises(ConfigError, match="subsets train=256, valid=64 need 320 pairs but the corpus has only 300"):
        wmt14.subsets(PAIRS, {"train": 256, "valid": 64}, seed=0)


def test_tokenize_normalises_then_splits_punctuation_without_escaping():
    # English normalisation moves the comma inside the quotes (Moses normalize-punctuation.perl).
    assert wmt14.tokenize('He said "fish & chips", didn\'t he?', "en") == 'He said " fish & chips , " didn \'t he ?'
    assert wmt14.tokenize("L'agence a abaissé la note.", "fr") == "L' agence a abaissé la note ."


@pytest.mark.parametrize(
    "text, lang",
    [
        ("As America's road planners struggle to find the cash, many see a solution.", "en"),
        ('"It is second nature for children today," notes Albert Cheng (Disney).', "en"),
        ("L'agence de notation Standard & Poor's a abaissé vendredi la note de l'Ukraine.", "fr"),
        ("Equipé d'un wingsuit (une combinaison munie d'ailes), il est passé au-dessus du sanctuaire.", "fr"),
    ],
)
def test_detokenize_inverts_tokenize(text, lang):
    tokens = wmt14.tokenize(text, lang)
    assert tokens != text
    assert wmt14.detokenize(tokens, lang) == text
