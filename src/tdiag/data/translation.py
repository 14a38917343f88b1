"""Translation datasets from a real corpus: subsets, Moses tokenisation, joint BPE, token ids.

Three stages (plan.py), each a `tdiag` verb over one function here:

- `prepare`: aligned sentence pairs from the fetched corpus, seeded disjoint subsets of
  n_train / n_valid / n_test pairs, written as raw text (`{split}.raw.{lang}`, kept for
  BLEU against real references) and Moses-tokenised text (`{split}.tok.{lang}`), line by
  line aligned. With `training_corpus: newstest2014` (the offline mirror holds only
  newstest2014) all three subsets are drawn from newstest2014; otherwise train comes
  from that corpus and valid/test from newstest2014.
- `learn_bpe`: joint subword-nmt codes over the tokenised training source and target
  (Sennrich et al. 2016, section 3.2).
- `apply_bpe`: every split segmented with the codes (`{split}.bpe.{lang}`), one joint
  vocabulary (or one per side) from the segmented training text, and `{split}.jsonl` records in the
  synthetic tasks' format (`{"src": ids, "tgt": ids}`, both from `<go>` to `<stop>`) plus
  the pair's raw text (`src_text`, `tgt_text`). `meta.json`, with the data card, is last.

Token ids: 0 <pad>, 1 <go>, 2 <stop>, 3 <unk>, then subwords, most frequent first. Source
and target share one vocabulary by default (`shared_vocab: true`; the BPE codes are
joint either way); with `shared_vocab: false` each side gets the vocabulary of its own
segmented training text. The model keeps separate source and target embeddings.
"""

from __future__ import annotations

from pathlib import Path

from tdiag import atomic, paths
from tdiag.config import TranslationTaskConfig
from tdiag.data import bpe, corpora, wmt14
from tdiag.data.fetch import fetched
from tdiag.data.synthetic import seq2seq_meta
from tdiag.data.wmt14 import Pair
from tdiag.errors import UserError

SPECIALS = ["<pad>", "<go>", "<stop>", "<unk>"]
PAD, GO, STOP, UNK = range(len(SPECIALS))
NEWSTEST = "newstest2014"


# ------------------------------------------------------------------------ prepare


def _parallel_text(folder: Path, corpus: str, src_lang: str, tgt_lang: str) -> list[Pair]:
    """Line-aligned plain-text training corpus (Europarl, News Commentary); pairs with an empty side are skipped."""
    files = {f.suffix.lstrip("."): f for f in corpora.corpus(corpus).outputs(folder)}
    with open(files[src_lang], encoding="utf-8") as fs, open(files[tgt_lang], encoding="utf-8") as ft:
        src, tgt = fs.read().splitlines(), ft.read().splitlines()
    if len(src) != len(tgt):
        raise UserError(f"{files[src_lang]} and {files[tgt_lang]} do not align: {len(src)} and {len(tgt)} lines")
    return [
        Pair(corpus, str(n), s.strip(), t.strip()) for n, (s, t) in enumerate(zip(src, tgt), 1) if s.strip() and t.strip()
    ]


def select_pairs(cfg: TranslationTaskConfig, root: Path = Path(".")) -> dict[str, list[Pair]]:
    """The raw (untokenised) pairs of each split, a function of the fetched files and `cfg` alone."""
    newstest = wmt14.newstest2014(fetched(cfg.corpus, root)[0])
    # Held-out subsets are cut first, so they are the same whatever the training size or corpus.
    if cfg.training_corpus == NEWSTEST:
        return wmt14.subsets(newstest, {"valid": cfg.n_valid, "test": cfg.n_test, "train": cfg.n_train}, cfg.seed)
    held_out = wmt14.subsets(newstest, {"valid": cfg.n_valid, "test": cfg.n_test}, cfg.seed)
    folder, _ = fetched(cfg.training_corpus, root)
    training = _parallel_text(folder, cfg.training_corpus, cfg.source_lang, cfg.target_lang)
    return {**wmt14.subsets(training, {"train": cfg.n_train}, cfg.seed), **held_out}


def _lines(texts: list[str]) -> str:
    return "".join(t + "\n" for t in texts)


def prepare(name: str, cfg: TranslationTaskConfig, root: Path = Path(".")) -> dict[str, int]:
    """Write `{split}.raw.{lang}` and `{split}.tok.{lang}` for every split; returns the split sizes."""
    splits = select_pairs(cfg, root)
    for split, pairs in splits.items():
        for lang, side in ((cfg.source_lang, "src"), (cfg.target_lang, "tgt")):
            raw = [getattr(p, side) for p in pairs]
            atomic.write_text(root / paths.raw_text(name, split, lang), _lines(raw))
            atomic.write_text(root / paths.tokenized(name, split, lang), _lines(wmt14.tokenize(t, lang) for t in raw))
    sizes = {split: len(pairs) for split, pairs in splits.items()}
    print(f"dataset {name}: {sizes} pairs")
    return sizes


# ---------------------------------------------------------------------------- BPE


def learn_bpe(name: str, cfg: TranslationTaskConfig, root: Path = Path(".")) -> Path:
    """Joint BPE codes (`cfg.bpe_merges` merges) over the tokenised training source and target."""
    train = [root / paths.tokenized(name, "train", lang) for lang in (cfg.source_lang, cfg.target_lang)]
    codes = root / paths.bpe_codes(name)
    bpe.learn(train, codes, cfg.bpe_merges)
    return codes


def _read_lines(path: Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def apply_bpe(name: str, cfg: TranslationTaskConfig, root: Path = Path(".")) -> dict:
    """Segment every split, build the joint vocabulary, write `{split}.jsonl` and `meta.json` (last)."""
    langs = (cfg.source_lang, cfg.target_lang)
    codes = root / paths.bpe_codes(name)
    for split in paths.SPLITS:
        for lang in langs:
            bpe.apply(codes, root / paths.tokenized(name, split, lang), root / paths.bpe_text(name, split, lang))

    def vocabulary(sides: tuple[str, ...]) -> list[str]:
        counted = bpe.vocabulary([root / paths.bpe_text(name, "train", lang) for lang in sides])
        return SPECIALS + [t for t, _ in counted if t not in SPECIALS]

    if cfg.shared_vocab:
        src_tokens = tgt_tokens = vocabulary(langs)
    else:
        src_tokens, tgt_tokens = vocabulary(langs[:1]), vocabulary(langs[1:])
    indexes = {side: {t: i for i, t in enumerate(tokens)} for side, tokens in (("src", src_tokens), ("tgt", tgt_tokens))}

    def encode(line: str, side: str) -> list[int]:
        return [GO, *(indexes[side].get(t, UNK) for t in line.split()), STOP]

    splits, dropped, unknown, counts = {}, {}, {}, {}
    for split in paths.SPLITS:
        segmented = [_read_lines(root / paths.bpe_text(name, split, lang)) for lang in langs]
        raw = [_read_lines(root / paths.raw_text(name, split, lang)) for lang in langs]
        records = []
        for src, tgt, src_text, tgt_text in zip(*segmented, *raw):
            # Long training pairs are dropped to bound memory; held-out pairs never are, so
            # every split keeps the sentences its BLEU is reported on.
            if split == "train" and max(len(src.split()), len(tgt.split())) > cfg.max_tokens:
                continue
            records.append(
                {"src": encode(src, "src"), "tgt": encode(tgt, "tgt"), "src_text": src_text, "tgt_text": tgt_text}
            )
        atomic.write_jsonl(root / paths.pairs_split(name, split), records)
        splits[split] = records
        dropped[split] = len(raw[0]) - len(records)
        unknown[split] = sum(r[side].count(UNK) for r in records for side in ("src", "tgt"))
        counts[split] = {side: sum(len(r[side]) - 2 for r in records) for side in ("src", "tgt")}

    sizes = {split: len(records) for split, records in splits.items()}
    meta = seq2seq_meta(
        name, cfg, splits, src_tokens, tgt_tokens,
        shared_vocabulary=cfg.shared_vocab,
        character_level=False,
        unk_id=UNK,
        text={"kind": "bpe", "source_lang": cfg.source_lang, "target_lang": cfg.target_lang, "separator": bpe.SEPARATOR},
        card=data_card(name, cfg, root, sizes, dropped, unknown, counts, (len(src_tokens), len(tgt_tokens))),
    )
    atomic.write_json(root / paths.prepared_meta(name), meta)
    print(
        f"dataset {name}: {sizes} pairs ({dropped['train']} long training pairs dropped), "
        f"vocabulary {len(src_tokens)} source / {len(tgt_tokens)} target"
    )
    return meta


def data_card(
    name: str, cfg: TranslationTaskConfig, root: Path, sizes: dict, dropped: dict, unknown: dict, counts: dict,
    vocab_sizes: tuple[int, int],
) -> dict:
    """What the dataset is made of and where it came from, for the report."""

    def source(corpus: str) -> dict:
        _, record = fetched(corpus, root)
        keep = ("title", "origin", "mirror", "url", "checksum", "note", "license", "citation")
        return {"corpus": corpus, **{k: record.get(k) for k in keep}}

    corpora_used = [cfg.corpus] + ([cfg.training_corpus] if cfg.training_corpus != NEWSTEST else [])
    return {
        "dataset": name,
        "language_pair": f"{cfg.source_lang}-{cfg.target_lang}",
        "training_pairs_from": "newstest2014" if cfg.training_corpus == NEWSTEST else cfg.training_corpus,
        "held_out_pairs_from": NEWSTEST,
        "sources": [source(c) for c in corpora_used],
        "subset_seed": cfg.seed,
        "requested_sizes": {"train": cfg.n_train, "valid": cfg.n_valid, "test": cfg.n_test},
        "sizes": sizes,
        "dropped_long_pairs": dropped,
        "max_tokens": cfg.max_tokens,
        "subword_tokens": counts,
        "unknown_tokens": unknown,
        "tokenizer": "sacremoses: punctuation normalisation + tokenizer (escape off)",
        "bpe": f"subword-nmt, joint codes over train {cfg.source_lang}+{cfg.target_lang}",
        "bpe_merges": cfg.bpe_merges,
        "vocabulary": (
            "joint (shared by source and target), from the segmented training text"
            if cfg.shared_vocab
            else "separate source and target vocabularies, each from its side of the segmented training text"
        ),
        "vocabulary_size": vocab_sizes[0] if cfg.shared_vocab else {"source": vocab_sizes[0], "target": vocab_sizes[1]},
        "special_tokens": SPECIALS,
    }
