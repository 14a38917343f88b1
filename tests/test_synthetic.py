"""The copy task: token layout, disjoint splits, determinism, and what write_dataset writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tdiag import paths
from tdiag.config import SymbolTaskConfig, load
from tdiag.data.synthetic import GO, PAD, STOP, generate, write_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg() -> SymbolTaskConfig:
    """The committed copy dataset (20 ids, 4 content symbols, 21,500 examples)."""
    return load(REPO / "params.yaml", env={}).datasets["copy"]


@pytest.fixture(scope="module")
def splits(cfg) -> dict:
    return generate(cfg)[0]


def _sources(examples) -> set[tuple[int, ...]]:
    return {tuple(ex["src"]) for ex in examples}


def test_committed_config_is_the_documented_one(cfg):
    assert (cfg.task, cfg.vocab_size, cfg.content_length) == ("copy", 20, 4)


def test_examples_are_go_content_stop(cfg, splits):
    content_ids = set(range(3, cfg.vocab_size))
    seen = set()
    for examples in splits.values():
        for ex in examples:
            src = ex["src"]
            assert len(src) == cfg.content_length + 2
            assert src[0] == GO == 1 and src[-1] == STOP == 2
            assert set(src[1:-1]) <= content_ids
            assert PAD not in src
            seen.update(src[1:-1])
    assert seen == content_ids, "some content symbol never appears"


def test_target_is_the_source(splits):
    for examples in splits.values():
        for ex in examples:
            assert ex["tgt"] == ex["src"]


def test_split_sizes(cfg, splits):
    assert [len(splits[s]) for s in paths.SPLITS] == [cfg.n_train, cfg.n_valid, cfg.n_test]


def test_splits_are_disjoint_and_sources_distinct(splits):
    train, valid, test = (_sources(splits[s]) for s in paths.SPLITS)
    # 17**4 sequences is far more than 21,500: no source repeats anywhere
    assert len(train) == len(splits["train"])
    assert len(valid) == len(splits["valid"]) and len(test) == len(splits["test"])
    assert not train & valid
    assert not train & test
    assert not valid & test


def test_whole_space_fits_when_asked_for_exactly():
    # 2 symbols, length 3: 8 sequences, all of them used
    small = SymbolTaskConfig(task="copy", vocab_size=5, content_length=3, n_train=5, n_valid=2, n_test=1, seed=3)
    got = generate(small)[0]
    every = set().union(*(_sources(got[s]) for s in paths.SPLITS))
    expected = {(GO, a, b, c, STOP) for a in (3, 4) for b in (3, 4) for c in (3, 4)}
    assert every == expected
    assert sum(len(got[s]) for s in paths.SPLITS) == 8


def test_same_seed_same_data_other_seed_other_data(cfg):
    assert generate(cfg) == generate(cfg)
    mine, other = generate(cfg)[0], generate(cfg.model_copy(update={"seed": cfg.seed + 1}))[0]
    assert other["train"] != mine["train"]
    assert _sources(other["test"]) != _sources(mine["test"])


def test_write_dataset_files(tmp_path):
    small = SymbolTaskConfig(task="copy", vocab_size=20, content_length=4, n_train=30, n_valid=5, n_test=7, seed=2)
    meta = write_dataset("tiny", small, root=tmp_path)

    folder = tmp_path / "results" / "data" / "synthetic" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "test.jsonl", "train.jsonl", "valid.jsonl"]

    expected = generate(small)[0]
    for split in paths.SPLITS:
        records = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        assert records == expected[split]
    first = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    assert first["src"][0] == 1 and first["src"][-1] == 2 and len(first["src"]) == 6  # [1, x1..x4, 2]

    on_disk = json.loads((folder / "meta.json").read_text())
    assert on_disk == meta
    assert on_disk["name"] == "tiny"
    assert (on_disk["src_vocab_size"], on_disk["tgt_vocab_size"]) == (20, 20)
    assert (on_disk["pad_id"], on_disk["go_id"], on_disk["stop_id"]) == (0, 1, 2)
    assert (on_disk["max_src_len"], on_disk["max_tgt_len"]) == (6, 6)
    assert on_disk["sizes"] == {"train": 30, "valid": 5, "test": 7}
    assert SymbolTaskConfig.model_validate(on_disk["config"]) == small


def test_write_dataset_twice_is_identical(tmp_path):
    small = SymbolTaskConfig(task="copy", n_train=20, n_valid=3, n_test=3)
    write_dataset("tiny", small, root=tmp_path / "a")
    write_dataset("tiny", small, root=tmp_path / "b")
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "meta.json"):
        a = (tmp_path / "a" / paths.synthetic_dir("tiny") / name).read_bytes()
        b = (tmp_path / "b" / paths.synthetic_dir("tiny") / name).read_bytes()
        assert a == b, name
