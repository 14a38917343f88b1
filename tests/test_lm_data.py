"""Word-level LM data: vocabulary, encoding, stream batching and bptt segments."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from tdiag.data.language_model import EOS, UNK, Vocabulary, batchify, n_segments, segment

MIRROR_TRAIN = Path("/work/shared/data/wikitext-2-mini/wiki.train.tokens")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "wiki.train.tokens").write_text(" = Title = \n\n the cat sat \n the <unk> dog \n", encoding="utf-8")
    (tmp_path / "wiki.valid.tokens").write_text(" the bird sat \n\n", encoding="utf-8")
    return tmp_path


def test_vocabulary_from_train_only_in_first_seen_order(corpus):
    vocab = Vocabulary.from_file(corpus / "wiki.train.tokens")
    assert vocab.tokens == ("=", "Title", EOS, "the", "cat", "sat", UNK, "dog")
    assert all(vocab.index[t] == i for i, t in enumerate(vocab.tokens))
    assert "bird" not in vocab.index


def test_every_line_ends_with_eos_blank_ones_too(corpus):
    vocab = Vocabulary.from_file(corpus / "wiki.train.tokens")
    decoded = [vocab.tokens[i] for i in vocab.encode_file(corpus / "wiki.train.tokens")]
    assert decoded == ["=", "Title", "=", EOS, EOS, "the", "cat", "sat", EOS, "the", UNK, "dog", EOS]


def test_unknown_words_map_to_unk(corpus):
    vocab = Vocabulary.from_file(corpus / "wiki.train.tokens")
    ids = vocab.encode_file(corpus / "wiki.valid.tokens")
    assert ids.dtype == torch.long
    assert [vocab.tokens[i] for i in ids] == ["the", UNK, "sat", EOS, EOS]


def test_unk_is_added_when_train_lacks_it(tmp_path):
    (tmp_path / "train").write_text("a b\nb c\n", encoding="utf-8")
    (tmp_path / "valid").write_text("a z\n", encoding="utf-8")
    vocab = Vocabulary.from_file(tmp_path / "train")
    assert vocab.tokens == ("a", "b", EOS, "c", UNK)
    assert vocab.encode_file(tmp_path / "valid").tolist() == [0, vocab.unk_id, vocab.eos_id]


def test_vocabulary_is_frozen_and_round_trips(corpus, tmp_path):
    vocab = Vocabulary.from_file(corpus / "wiki.train.tokens")
    with pytest.raises(AttributeError):
        vocab.tokens = ()
    with pytest.raises(TypeError):
        vocab.index["new"] = 99
    vocab.save(tmp_path / "out" / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "out" / "vocab.json")
    assert loaded == vocab and dict(loaded.index) == dict(vocab.index)


def test_load_refuses_a_file_that_is_not_a_vocabulary(tmp_path):
    (tmp_path / "v.json").write_text('{"tokens": ["a", "a", "<eos>", "<unk>"]}')
    with pytest.raises(ValueError, match="v.json: vocabulary tokens must be distinct"):
        Vocabulary.load(tmp_path / "v.json")
    (tmp_path / "w.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="w.json: not a vocabulary file"):
        Vocabulary.load(tmp_path / "w.json")


def test_batchify_gives_contiguous_rows_and_drops_the_remainder():
    data = batchify(torch.arange(23), 4)
    assert data.shape == (4, 5)
    for b in range(4):
        assert data[b].tolist() == list(range(5 * b, 5 * b + 5))
    with pytest.raises(ValueError, match="fewer than 2 steps per row at batch_size 4"):
        batchify(torch.arange(7), 4)


def test_segments_cover_the_rows_with_targets_shifted_by_one():
    data = batchify(torch.arange(2 * 11), 2)  # (2, 11): 10 predictions per row
    assert n_segments(data, 4) == 3
    seen_inputs, seen_targets = [], []
    for i in range(n_segments(data, 4)):
        inputs, targets = segment(data, i * 4, 4)
        assert inputs.shape == targets.shape == (2, 4 if i < 2 else 2)  # the last one is shorter
        assert torch.equal(targets, inputs + 1)  # the stream is arange: next token = this + 1
        seen_inputs.append(inputs)
        seen_targets.append(targets)
    torch.testing.assert_close(torch.cat(seen_inputs, dim=1), data[:, :-1])
    torch.testing.assert_close(torch.cat(seen_targets, dim=1), data[:, 1:])
    with pytest.raises(ValueError, match="segment start 10 is outside 0..9"):
        segment(data, 10, 4)


def test_n_segments_when_bptt_divides_evenly():
    data = batchify(torch.arange(9), 1)
    assert n_segments(data, 4) == 2
    assert segment(data, 4, 4)[1].tolist() == [[5, 6, 7, 8]]


@pytest.mark.skipif(not MIRROR_TRAIN.exists(), reason="offline data mirror not present")
def test_mirror_counts_match_an_independent_count():
    with open(MIRROR_TRAIN, encoding="utf-8") as lines:
        counts = Counter(word for line in lines for word in line.split() + ["<eos>"])
    vocab = Vocabulary.from_file(MIRROR_TRAIN)
    ids = vocab.encode_file(MIRROR_TRAIN)
    assert len(vocab) == len(counts) + (UNK not in counts)
    assert ids.numel() == sum(counts.values())
    # Each id occurs as often as its word does: nothing was mapped to <unk> by mistake.
    assert torch.bincount(ids, minlength=len(vocab)).tolist() == [counts[t] for t in vocab.tokens]


def test_preparing_twice_writes_the_same_bytes(tmp_path):
    """The prepared splits are a pure function of the corpus: a rerun of the stage gives
    DVC unchanged outputs, so nothing downstream reruns for nothing."""
    from tdiag import paths
    from tdiag.config import LanguageModelTaskConfig
    from tdiag.data.language_model import prepare

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in paths.SPLITS:
        (corpus / f"wiki.{split}.tokens").write_text(f" = {split} = \n the cat sat \n", encoding="utf-8")
    cfg = LanguageModelTaskConfig(task="language_model", corpus="wikitext2", path=str(corpus))
    written = []
    for run in range(2):
        prepare("mine", cfg, root=tmp_path)
        written.append({s: (tmp_path / paths.lm_split("mine", s)).read_bytes() for s in paths.SPLITS})
    assert written[0] == written[1]
    assert torch.load(tmp_path / paths.lm_split("mine", "test"), weights_only=True).numel() == 8  # 6 words, 2 <eos>
