"""Seeded synthetic seq2seq datasets with disjoint train/valid/test splits.

Token ids: 0 = <pad>, 1 = <go>, 2 = <stop>, content symbols from 3. Every example is
`{"src": [1, ..., 2], "tgt": [1, ..., 2]}`; splits hold distinct sources, so no
held-out sequence is ever seen in training.
"""

from __future__ import annotations

import random
from pathlib import Path

from tdiag import atomic, paths
from tdiag.config import CopyTaskConfig

PAD, GO, STOP = 0, 1, 2
FIRST_SYMBOL = 3

Example = dict[str, list[int]]


def _distinct_contents(n: int, n_symbols: int, length: int, rng: random.Random) -> list[list[int]]:
    """`n` distinct symbol strings, drawn uniformly without replacement.

    Sampling integer codes from range(n_symbols ** length) avoids materialising the
    space and guarantees distinctness (random.sample on a range is O(n)).
    """
    codes = rng.sample(range(n_symbols**length), n)
    contents = []
    for code in codes:
        digits = []
        for _ in range(length):
            code, digit = divmod(code, n_symbols)
            digits.append(FIRST_SYMBOL + digit)
        contents.append(digits)
    return contents


def copy_task(cfg: CopyTaskConfig) -> dict[str, list[Example]]:
    rng = random.Random(cfg.seed)
    contents = _distinct_contents(cfg.n_train + cfg.n_valid + cfg.n_test, cfg.vocab_size - 3, cfg.content_length, rng)
    examples = [{"src": [GO, *c, STOP], "tgt": [GO, *c, STOP]} for c in contents]
    return _split(examples, cfg.n_train, cfg.n_valid)


def _split(examples: list[Example], n_train: int, n_valid: int) -> dict[str, list[Example]]:
    return {
        "train": examples[:n_train],
        "valid": examples[n_train : n_train + n_valid],
        "test": examples[n_train + n_valid :],
    }


GENERATORS = {"copy": copy_task}


def vocab_sizes(cfg: CopyTaskConfig) -> tuple[int, int]:
    """(source, target) vocabulary sizes, special tokens included."""
    return cfg.vocab_size, cfg.vocab_size


def generate(cfg: CopyTaskConfig) -> dict[str, list[Example]]:
    return GENERATORS[cfg.task](cfg)


def write_dataset(name: str, cfg: CopyTaskConfig, root: Path = Path(".")) -> dict:
    """Generate and write `<split>.jsonl` files and `meta.json` (last) for dataset `name`."""
    splits = generate(cfg)
    for split, examples in splits.items():
        atomic.write_jsonl(root / paths.synthetic_split(name, split), examples)
    src_vocab, tgt_vocab = vocab_sizes(cfg)
    every = [ex for examples in splits.values() for ex in examples]
    meta = {
        "name": name,
        "config": cfg.model_dump(mode="json"),
        "src_vocab_size": src_vocab,
        "tgt_vocab_size": tgt_vocab,
        "pad_id": PAD,
        "go_id": GO,
        "stop_id": STOP,
        "max_src_len": max(len(ex["src"]) for ex in every),
        "max_tgt_len": max(len(ex["tgt"]) for ex in every),
        "sizes": {split: len(examples) for split, examples in splits.items()},
    }
    atomic.write_json(root / paths.synthetic_meta(name), meta)
    return meta
