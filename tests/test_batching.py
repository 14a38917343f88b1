"""Padding, trimming, and a batch order that depends on (seed, step) alone."""

from __future__ import annotations

import json

import torch

from tdiag.data.batching import PairedData, batch_indices, load_pairs, pad, trim


def test_pad_right_pads_to_the_longest():
    out = pad([[5, 6, 7], [8], [9, 10]])
    assert out.dtype == torch.long
    assert out.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert pad([[5], [6, 7]], pad_id=-1).tolist() == [[5, -1], [6, 7]]


def test_trim_drops_only_trailing_all_pad_columns():
    batch = torch.tensor([[1, 0, 2, 0, 0], [3, 0, 0, 0, 0]])
    assert trim(batch).tolist() == [[1, 0, 2], [3, 0, 0]]  # the inner all-pad column stays
    assert trim(torch.tensor([[1, 2], [3, 4]])).tolist() == [[1, 2], [3, 4]]
    assert trim(torch.tensor([[7, 9, 9]]), pad_id=9).tolist() == [[7]]
    assert trim(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 1)


def test_paired_batch_trims_to_the_selected_rows():
    data = PairedData(
        pad([[1, 3, 2], [1, 3, 4, 5, 6, 2], [1, 4, 2]]),
        pad([[1, 3, 3, 2], [1, 2], [1, 4, 2]]),
    )
    assert len(data) == 3
    src, tgt = data.batch(torch.tensor([0, 2]))
    assert src.tolist() == [[1, 3, 2], [1, 4, 2]]
    assert tgt.tolist() == [[1, 3, 3, 2], [1, 4, 2, 0]]
    src, tgt = data.batch(torch.tensor([1]))
    assert src.shape == (1, 6) and tgt.tolist() == [[1, 2]]


def test_load_pairs_reads_jsonl(tmp_path):
    path = tmp_path / "split.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"src": [1, 3, 2], "tgt": [1, 3, 2]}, {"src": [1, 2], "tgt": [1, 4, 4, 2]}]))
    data = load_pairs(path)
    assert data.src.tolist() == [[1, 3, 2], [1, 2, 0]]
    assert data.tgt.tolist() == [[1, 3, 2, 0], [1, 4, 4, 2]]


def test_batch_is_a_pure_function_of_seed_and_step():
    first = batch_indices(1000, 32, seed=7, step=45)
    # other seeds and epochs in between evict the epoch cache; the answer must not move
    for seed in range(6):
        for step in (0, 31, 62, 93, 500):
            batch_indices(1000, 32, seed=seed, step=step)
    again = batch_indices(1000, 32, seed=7, step=45)
    assert torch.equal(first, again)
    assert not torch.equal(first, batch_indices(1000, 32, seed=8, step=45))


def test_each_epoch_covers_every_example_once():
    n, size = 100, 10
    for epoch in range(3):
        seen = torch.cat([batch_indices(n, size, seed=0, step=epoch * 10 + k) for k in range(10)])
        assert sorted(seen.tolist()) == list(range(n))


def test_partial_last_batch_is_dropped():
    n, size = 103, 10  # 10 full batches an epoch, 3 examples left out
    epoch0 = [batch_indices(n, size, seed=1, step=k) for k in range(10)]
    assert all(len(b) == size for b in epoch0)
    seen = torch.cat(epoch0).tolist()
    assert len(set(seen)) == 100 and set(seen) <= set(range(n))
    # step 10 starts a fresh epoch, not the 3 leftovers
    assert len(batch_indices(n, size, seed=1, step=10)) == size


def test_epochs_are_shuffled_differently():
    n, size = 100, 10
    epoch0 = torch.cat([batch_indices(n, size, seed=0, step=k) for k in range(10)])
    epoch1 = torch.cat([batch_indices(n, size, seed=0, step=10 + k) for k in range(10)])
    assert not torch.equal(epoch0, epoch1)
    assert not torch.equal(epoch0, torch.arange(n)), "epoch order is not shuffled"


def test_batch_larger_than_data_gives_all_examples_each_step():
    for step in range(3):
        assert sorted(batch_indices(5, 8, seed=0, step=step).tolist()) == list(range(5))
