"""Seeded synthetic seq2seq datasets with disjoint train/valid/test splits.

Token ids: 0 = <pad>, 1 = <go>, 2 = <stop>, then the task's symbols. Every example is
`{"src": [1, ..., 2], "tgt": [1, ..., 2]}`. Held-out (valid, test) sources are
distinct and never appear in train; train draws distinct sources while the task has
enough of them and repeats sources only when its space is smaller than `n_train`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

from tdiag import atomic, paths
from tdiag.config import DatasetConfig, DatesTaskConfig, PolynomialTaskConfig, SymbolTaskConfig
from tdiag.data import dates, polynomial

PAD, GO, STOP = 0, 1, 2
SPECIALS = ["<pad>", "<go>", "<stop>"]
FIRST_SYMBOL = len(SPECIALS)

Example = dict[str, list[int]]
Splits = dict[str, list[Example]]


# ------------------------------------------------------------------ symbol tasks


def _content(cfg: SymbolTaskConfig, code: int) -> list[int]:
    """The content sequence numbered `code` in the task's space of distinct sources."""
    symbols = cfg.vocab_size - FIRST_SYMBOL
    if cfg.task == "structured":
        content = []
        for length in cfg.runs():
            code, start = divmod(code, symbols - length + 1)
            content += range(FIRST_SYMBOL + start, FIRST_SYMBOL + start + length)
        return content
    digits = []
    for _ in range(cfg.content_length):
        code, digit = divmod(code, symbols)
        digits.append(FIRST_SYMBOL + digit)
    return digits


def _target(cfg: SymbolTaskConfig, content: list[int]) -> list[int]:
    if cfg.task in ("copy", "structured"):
        return content
    if cfg.task == "reverse":
        return content[::-1]
    if cfg.task == "pairwise_sum":
        previous = [GO, *content[:-1]]  # x_0 is the <go> value 1
        return [x + p for x, p in zip(content, previous)]
    raise ValueError(f"unknown symbol task {cfg.task!r}")


def target_vocab_size(cfg: SymbolTaskConfig) -> int:
    """Pairwise sums reach 2 * (vocab_size - 1); every other task keeps the source vocabulary."""
    return 2 * (cfg.vocab_size - 1) + 1 if cfg.task == "pairwise_sum" else cfg.vocab_size


def _symbol_splits(cfg: SymbolTaskConfig) -> Splits:
    rng = random.Random(cfg.seed)
    distinct = cfg.distinct_sources()
    held_out = cfg.n_valid + cfg.n_test
    n_distinct_train = min(cfg.n_train, distinct - held_out)
    # random.sample over a range is O(k): the space is never materialised.
    codes = rng.sample(range(distinct), held_out + n_distinct_train)
    train_codes = codes[held_out:]
    train_codes += [rng.choice(train_codes) for _ in range(cfg.n_train - n_distinct_train)]

    def example(code: int) -> Example:
        content = _content(cfg, code)
        return {"src": [GO, *content, STOP], "tgt": [GO, *_target(cfg, content), STOP]}

    return {
        "train": [example(c) for c in train_codes],
        "valid": [example(c) for c in codes[: cfg.n_valid]],
        "test": [example(c) for c in codes[cfg.n_valid : held_out]],
    }


def _symbol_vocabularies(cfg: SymbolTaskConfig) -> tuple[list[str], list[str]]:
    def tokens(size: int) -> list[str]:
        return SPECIALS + [str(i) for i in range(FIRST_SYMBOL, size)]

    return tokens(cfg.vocab_size), tokens(target_vocab_size(cfg))


# -------------------------------------------------------------- character tasks

def _text_splits(cfg, pairs: Iterator[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Distinct held-out sources first, then train pairs whose source is not held out."""
    held_out: dict[str, str] = {}
    wanted = cfg.n_valid + cfg.n_test
    attempts_left = 100 * (wanted + cfg.n_train)
    for source, target in pairs:
        attempts_left -= 1
        if attempts_left < 0:
            raise ValueError(f"{cfg.task}: could not draw {wanted} distinct held-out examples")
        held_out.setdefault(source, target)
        if len(held_out) == wanted:
            break
    train = []
    for source, target in pairs:
        attempts_left -= 1
        if attempts_left < 0:
            raise ValueError(f"{cfg.task}: could not draw {cfg.n_train} training examples unseen in held-out data")
        if source not in held_out:
            train.append((source, target))
            if len(train) == cfg.n_train:
                break
    ordered = list(held_out.items())
    return {"train": train, "valid": ordered[: cfg.n_valid], "test": ordered[cfg.n_valid :]}


def _char_splits(cfg, pairs: Iterator[tuple[str, str]]) -> tuple[Splits, list[str]]:
    text = _text_splits(cfg, pairs)
    chars = sorted({ch for split in text.values() for pair in split for s in pair for ch in s})
    tokens = SPECIALS + chars
    ids = {ch: i for i, ch in enumerate(tokens)}

    def encode(s: str) -> list[int]:
        return [GO, *(ids[ch] for ch in s), STOP]

    splits = {name: [{"src": encode(s), "tgt": encode(t)} for s, t in pairs_] for name, pairs_ in text.items()}
    return splits, tokens


# ------------------------------------------------------------------------ entry


def generate(cfg: DatasetConfig) -> tuple[Splits, list[str], list[str]]:
    """(splits, source tokens, target tokens) for a dataset config; token index = id."""
    if isinstance(cfg, SymbolTaskConfig):
        return (_symbol_splits(cfg), *_symbol_vocabularies(cfg))
    rng = random.Random(cfg.seed)
    if isinstance(cfg, PolynomialTaskConfig):
        splits, tokens = _char_splits(cfg, polynomial.pairs(cfg, rng))
    elif isinstance(cfg, DatesTaskConfig):
        splits, tokens = _char_splits(cfg, dates.pairs(cfg, rng))
    else:
        raise ValueError(f"unknown dataset task {cfg.task!r}")
    return splits, tokens, tokens


def write_dataset(name: str, cfg: DatasetConfig, root: Path = Path(".")) -> dict:
    """Generate and write `<split>.jsonl` files and `meta.json` (last) for dataset `name`."""
    splits, src_tokens, tgt_tokens = generate(cfg)
    for split, examples in splits.items():
        atomic.write_jsonl(root / paths.synthetic_split(name, split), examples)
    meta = seq2seq_meta(name, cfg, splits, src_tokens, tgt_tokens, character_level=not isinstance(cfg, SymbolTaskConfig))
    atomic.write_json(root / paths.synthetic_meta(name), meta)
    return meta


def seq2seq_meta(name: str, cfg, splits: Splits, src_tokens: list[str], tgt_tokens: list[str], **extra) -> dict:
    """The `meta.json` every seq2seq dataset shares (Seq2SeqWorkload reads it), plus `extra`."""
    every = [ex for examples in splits.values() for ex in examples]
    return {
        "name": name,
        "kind": "seq2seq",
        "config": cfg.model_dump(mode="json"),
        "src_vocab_size": len(src_tokens),
        "tgt_vocab_size": len(tgt_tokens),
        "src_tokens": src_tokens,
        "tgt_tokens": tgt_tokens,
        "pad_id": PAD,
        "go_id": GO,
        "stop_id": STOP,
        "max_src_len": max(len(ex["src"]) for ex in every),
        "max_tgt_len": max(len(ex["tgt"]) for ex in every),
        "sizes": {split: len(examples) for split, examples in splits.items()},
        **extra,
    }
