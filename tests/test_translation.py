"""WMT14 en-fr translation data (data/translation.py) and its workload (train/seq2seq_workload.py):
subsets from the offline mirror, joint BPE, token ids, batches by tokens, text BLEU/chrF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tdiag import config, paths
from tdiag.config import TranslationTaskConfig
from tdiag.data import bpe, translation, wmt14
from tdiag.data.fetch import fetch_corpus
from tdiag.errors import UserError
from tdiag.report import translation as translation_report
from tdiag.train.loop import train_run
from tdiag.train.metrics import bleu, text_scores
from tdiag.train.seq2seq_workload import Seq2SeqWorkload

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_mirror = pytest.mark.skipif(
    not (MIRROR / "wmt14-newstest" / wmt14.SOURCE).is_file(), reason=f"the offline data mirror {MIRROR} is not present"
)
NAME = "wmt"
# The study's training size; few merges and a low max_tokens so that some training pairs
# (and some held-out pairs, which must be kept) are longer than max_tokens.
CFG = TranslationTaskConfig(n_train=1024, n_valid=24, n_test=24, bpe_merges=600, max_tokens=40, seed=3)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with wmt14 fetched from the mirror and the dataset through all three stages."""
    if not (MIRROR / "wmt14-newstest" / wmt14.SOURCE).is_file():
        pytest.skip(f"the offline data mirror {MIRROR} is not present")
    root = tmp_path_factory.mktemp("project")
    fetch_corpus("wmt14", None, MIRROR, root)
    translation.prepare(NAME, CFG, root)
    translation.learn_bpe(NAME, CFG, root)
    translation.apply_bpe(NAME, CFG, root)
    return root


def data_file(root: Path, kind: str, split: str, lang: str) -> Path:
    return root / getattr(paths, kind)(NAME, split, lang)


def meta(root: Path) -> dict:
    return json.loads((root / paths.prepared_meta(NAME)).read_text())


# ------------------------------------------------------------------------ prepare


@needs_mirror
def test_prepare_writes_aligned_raw_and_tokenised_text_of_each_size(project):
    for split, size in (("train", 1024), ("valid", 24), ("test", 24)):
        for lang in ("en", "fr"):
            raw, tok = lines(data_file(project, "raw_text", split, lang)), lines(data_file(project, "tokenized", split, lang))
            assert len(raw) == len(tok) == size
            assert [wmt14.tokenize(r, lang) for r in raw[:20]] == tok[:20]
    assert not list((project / paths.prepared_dir(NAME)).glob(".*"))  # atomic writes leave no temp file


@needs_mirror
def test_subsets_are_disjoint_seeded_pairs_of_newstest2014(project):
    chosen = translation.select_pairs(CFG, project)
    keys = {split: {(p.docid, p.seg) for p in pairs} for split, pairs in chosen.items()}
    assert {split: len(k) for split, k in keys.items()} == {"train": 1024, "valid": 24, "test": 24}
    assert not (keys["train"] & keys["valid"] or keys["train"] & keys["test"] or keys["valid"] & keys["test"])
    assert [p.tgt for p in chosen["valid"]] == lines(data_file(project, "raw_text", "valid", "fr"))
    assert translation.select_pairs(CFG, project) == chosen
    other = translation.select_pairs(CFG.model_copy(update={"seed": 4}), project)
    assert other["valid"] != chosen["valid"]
    smaller = translation.select_pairs(CFG.model_copy(update={"n_train": 100}), project)
    assert smaller["valid"] == chosen["valid"] and smaller["test"] == chosen["test"]


def test_prepare_without_the_fetched_corpus_says_which_command_to_run(tmp_path):
    with pytest.raises(UserError, match=r"corpus 'wmt14' is not fetched .*tdiag data fetch wmt14"):
        translation.prepare(NAME, CFG, tmp_path)


@needs_mirror
def test_training_pairs_come_from_the_training_corpus_when_one_is_set(project, tmp_path):
    root = tmp_path
    fetch_corpus("wmt14", None, MIRROR, root)
    folder = root / paths.corpus_dir("wmt14-europarl-v7") / "training"
    folder.mkdir(parents=True)
    (folder / "europarl-v7.fr-en.en").write_text("".join(f"Sentence {i}.\n" if i % 7 else "\n" for i in range(60)))
    (folder / "europarl-v7.fr-en.fr").write_text("".join(f"Phrase {i}.\n" for i in range(60)))
    (root / paths.corpus_source("wmt14-europarl-v7")).write_text("{}")
    cfg = CFG.model_copy(update={"training_corpus": "wmt14-europarl-v7", "n_train": 40})
    chosen = translation.select_pairs(cfg, root)
    assert len(chosen["train"]) == 40
    assert all(p.docid == "wmt14-europarl-v7" and p.src.split()[1] == p.tgt.split()[1] for p in chosen["train"])
    assert all(p.src.strip() for p in chosen["train"])  # pairs with an empty side are skipped
    assert chosen["valid"] == translation.select_pairs(CFG, project)["valid"]  # held out from newstest2014


# ---------------------------------------------------------------------------- BPE


@needs_mirror
@pytest.mark.parametrize("lang", ["en", "fr"])
def test_bpe_round_trip_gives_back_the_whole_tokenised_training_split(project, lang):
    segmented = data_file(project, "bpe_text", "train", lang).read_text(encoding="utf-8")
    assert "@@ " in segmented
    assert bpe.undo(segmented) == data_file(project, "tokenized", "train", lang).read_text(encoding="utf-8")


@needs_mirror
def test_codes_are_learnt_jointly_with_the_configured_merges(project):
    codes = lines(project / paths.bpe_codes(NAME))
    assert codes[0].startswith("#version") and len(codes) - 1 == CFG.bpe_merges


@needs_mirror
def test_ids_decode_back_to_the_segmented_text_through_one_joint_vocabulary(project):
    m = meta(project)
    tokens = m["tgt_tokens"]
    assert m["src_tokens"] == tokens and m["src_vocab_size"] == m["tgt_vocab_size"] == len(tokens)
    assert tokens[:4] == ["<pad>", "<go>", "<stop>", "<unk>"]
    assert (m["pad_id"], m["go_id"], m["stop_id"], m["unk_id"]) == (0, 1, 2, 3)
    vocabulary = set(tokens)
    for split in paths.SPLITS:
        records = read_jsonl(project / paths.pairs_split(NAME, split))
        segmented = {side: lines(data_file(project, "bpe_text", split, lang)) for side, lang in (("src", "en"), ("tgt", "fr"))}
        kept = [i for i, s in enumerate(segmented["src"])
                if split != "train" or max(len(s.split()), len(segmented["tgt"][i].split())) <= CFG.max_tokens]
        assert len(records) == len(kept)
        for record, i in zip(records, kept):
            for side in ("src", "tgt"):
                ids = record[side]
                assert ids[0] == 1 and ids[-1] == 2
                expected = [t if t in vocabulary else "<unk>" for t in segmented[side][i].split()]
                assert [tokens[j] for j in ids[1:-1]] == expected
    assert m["card"]["unknown_tokens"]["train"] == 0  # the vocabulary is the training text's


@needs_mirror
def test_separate_vocabularies_hold_each_side_s_own_subwords(project, tmp_path):
    separate = CFG.model_copy(update={"shared_vocab": False})
    root = tmp_path / "separate"
    fetch_corpus("wmt14", None, MIRROR, root)
    translation.prepare(NAME, separate, root)
    translation.learn_bpe(NAME, separate, root)
    translation.apply_bpe(NAME, separate, root)
    m = meta(root)
    assert not m["shared_vocabulary"] and m["src_tokens"] != m["tgt_tokens"]
    joint = set(meta(project)["tgt_tokens"])
    assert set(m["src_tokens"]) | set(m["tgt_tokens"]) == joint  # together: the joint vocabulary
    records = read_jsonl(root / paths.pairs_split(NAME, "train"))
    for side, lang in (("src", "en"), ("tgt", "fr")):
        segmented = {" ".join(line.split()) for line in lines(root / paths.bpe_text(NAME, "train", lang))}
        for record in records:  # every training line decodes through its own side's vocabulary
            assert " ".join(m[f"{side}_tokens"][i] for i in record[side][1:-1]) in segmented
        assert m[f"{side}_vocab_size"] == len(m[f"{side}_tokens"])


@needs_mirror
def test_max_tokens_drops_long_training_pairs_only(project):
    m = meta(project)
    long_valid = [s for s in lines(data_file(project, "bpe_text", "valid", "fr")) if len(s.split()) > CFG.max_tokens]
    assert long_valid, "the test needs a held-out pair longer than max_tokens"
    assert m["sizes"] == {"train": 1024 - m["card"]["dropped_long_pairs"]["train"], "valid": 24, "test": 24}
    assert 0 < m["card"]["dropped_long_pairs"]["train"] < 1024
    assert m["card"]["dropped_long_pairs"]["valid"] == m["card"]["dropped_long_pairs"]["test"] == 0
    train = read_jsonl(project / paths.pairs_split(NAME, "train"))
    assert max(max(len(r["src"]), len(r["tgt"])) - 2 for r in train) <= CFG.max_tokens


@needs_mirror
def test_records_carry_the_raw_references_and_meta_is_written_last(project):
    for split in ("valid", "test"):
        records = read_jsonl(project / paths.pairs_split(NAME, split))
        assert [r["tgt_text"] for r in records] == lines(data_file(project, "raw_text", split, "fr"))
        assert [r["src_text"] for r in records] == lines(data_file(project, "raw_text", split, "en"))
    m = meta(project)
    assert m["kind"] == "seq2seq"
    assert m["text"] == {"kind": "bpe", "source_lang": "en", "target_lang": "fr", "separator": "@@"}
    card = m["card"]
    assert card["bpe_merges"] == 600 and card["vocabulary_size"] == len(m["tgt_tokens"])
    assert card["sources"][0]["origin"] == "mirror" and card["sources"][0]["corpus"] == "wmt14"
    meta_time = (project / paths.prepared_meta(NAME)).stat().st_mtime_ns
    assert all(meta_time >= (project / paths.pairs_split(NAME, s)).stat().st_mtime_ns for s in paths.SPLITS)


# ------------------------------------------------------------------------ metrics


def test_text_bleu_of_identical_sentences_is_100_and_chrf_is_reported():
    refs = ["Le chat est assis sur le tapis.", "Il pleut, dit-elle."]
    scores = text_scores(refs, refs)
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in scores["bleu_signature"] and "nc:6" in scores["chrf_signature"]


def test_text_bleu_of_a_hand_computed_pair():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3 and equal lengths (no brevity penalty):
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4)
    scores = text_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert scores["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)
    assert 0 < scores["chrf"] < 100


def test_13a_tokenisation_splits_punctuation_that_tokenize_none_does_not():
    hyp, ref = ["Bonjour, le monde!"], ["Bonjour , le monde !"]
    assert text_scores(hyp, ["Bonjour, le monde!"])["bleu"] == pytest.approx(100.0)
    assert bleu(hyp, ref)[0] < 100.0 and "tok:none" in bleu(hyp, ref)[1]


# ----------------------------------------------------------------------- workload


def workload(root: Path, **train) -> Seq2SeqWorkload:
    tc = config.TrainConfig(**train)
    return Seq2SeqWorkload(root / paths.prepared_dir(NAME), meta(root), tc, torch.device("cpu"))


@needs_mirror
def test_token_batches_cover_each_epoch_once_and_depend_on_seed_and_step_only(project):
    w = workload(project, batch_tokens=600, micro_batches=2)
    n = len(w.splits["train"])
    assert w.steps_per_epoch == len(w.buckets)
    for epoch in range(2):
        steps = range(epoch * w.steps_per_epoch + 1, (epoch + 1) * w.steps_per_epoch + 1)
        batches = [w.train_batch(s, seed=5) for s in steps]
        sentences = sorted(sum(([len(src) for src, _ in b.micro] for b in batches), []))
        assert sum(sentences) == n
        for b in batches:
            widths = [tgt.shape[0] * tgt.shape[1] for _, tgt in b.micro]
            assert sum(widths) <= 600 or sum(tgt.shape[0] for _, tgt in b.micro) == 1
    again = workload(project, batch_tokens=600, micro_batches=2)
    first = [w.train_batch(s, seed=5).micro[0][1] for s in (1, 2, w.steps_per_epoch + 1)]
    assert all(torch.equal(a, again.train_batch(s, seed=5).micro[0][1]) for a, s in zip(first, (1, 2, w.steps_per_epoch + 1)))
    orders = [[int(w.train_batch(e * w.steps_per_epoch + s, seed=5).stats["tokens"]) for s in range(1, 6)] for e in (0, 1)]
    assert orders[0] != orders[1]  # each epoch shuffles the batch order


@needs_mirror
def test_decodes_are_scored_as_detokenised_text_against_the_raw_references(project, monkeypatch):
    w = workload(project)
    assert w.log_keys == ("loss", "token_accuracy", "bleu", "chrf") and w.eval_splits == ("valid", "train")
    # A model that decodes exactly the reference ids: the score is then the ceiling set
    # by tokenisation (Moses detokenisation does not restore every normalised character).
    monkeypatch.setattr(w, "_decode", lambda model, src, tgt: tgt)
    model = torch.nn.Module()
    one_hot = lambda src, tgt_in: torch.nn.functional.one_hot(tgt_in, w.vocab_sizes[1]).float()  # noqa: E731
    monkeypatch.setattr(model, "forward", one_hot, raising=False)
    result = w.evaluate(model, "train", decode_limit=200)
    assert result["decoded_examples"] == result["examples"] == 200
    assert result["bleu"] > 90 and result["chrf"] > 95
    assert "tok:13a" in result["bleu_signature"] and result["chrf_signature"].startswith("nrefs:1")
    sample = w.samples(model)[0]
    assert sample["split"] == "test" and sample["reference"] == w.raw["test"]["tgt"][0]
    assert "@@" not in sample["hypothesis"]


@needs_mirror
def test_a_tiny_translation_run_evaluates_train_and_valid_with_beam_search(project):
    params = {
        "data": {"mirror": str(MIRROR)},
        "datasets": {NAME: CFG.model_dump(mode="json")},
        "studies": {"wmt14": {
            "dataset": NAME,
            "model": {"d_model": 16, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 32, "max_len": 256},
            "train": {"max_steps": 4, "eval_every": 2, "eval_examples": 4, "batch_tokens": 400, "beam_size": 2,
                      "warmup_steps": 2, "checkpoint_every": 4},
            "runs": {"overfit": {}},
        }},
    }
    summary = train_run(config.validate(params), "wmt14", "overfit", root=project)
    seed = summary["per_seed"][0]
    assert seed["status"] == "completed" and seed["train"]["decoded_examples"] == meta(project)["sizes"]["train"]
    assert {"bleu", "chrf", "bleu_signature", "chrf_signature"} <= set(seed["valid"])
    assert seed["best_valid"]["metric"] == "bleu"
    records = read_jsonl(project / paths.seed_metrics("wmt14", "overfit", 0))
    evals = [(r["split"], r["step"]) for r in records if r["kind"] == "eval"]
    assert evals == [("valid", 0), ("train", 0), ("valid", 2), ("train", 2), ("valid", 4), ("train", 4)]
    assert all(r["decoded_examples"] == 4 for r in records if r["kind"] == "eval")
    # The report's tables read the run and the dataset.
    scores = translation_report.final_scores(project, "wmt14")
    assert list(scores.index.get_level_values("split")) == ["train", "valid", "test"]
    assert (scores["BLEU ceiling"] > 90).all() and scores["BLEU signature"].str.contains("tok:13a").all()
    assert len(translation_report.samples(project, "wmt14", "test").frame) == 5
    assert translation_report.data_card(project, NAME).loc["BPE merges", "value"] == 600
