"""Incremental decoding, greedy search and beam search (models/decoding.py)."""

import math

import pytest
import torch

from decoding_helpers import full_recompute_greedy, spy_on_backends
from tdiag.config import ModelConfig
from tdiag.models import build_model, decoding

PAD, GO, STOP = 0, 1, 2
VOCAB = 12


def model_of(seed: int = 0, stop_bias: float = 1.5, dtype=torch.float64, **overrides):
    fields = dict(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=32, max_len=16)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**fields, **overrides}), VOCAB, VOCAB, PAD).to(dtype).eval()
    # A <stop> bias makes rows stop at different steps, so finished hypotheses are exercised.
    with torch.no_grad():
        model.generator.bias[STOP] += stop_bias
    return model


def sources(batch: int = 6, length: int = 7, seed: int = 1) -> torch.Tensor:
    src = torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    src[1, 4:] = PAD  # a padded source
    return src


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("backend", ["manual", "sdpa"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_incremental_steps_use_the_configured_backend_and_give_the_full_forward_logits(
    norm, positions, backend, dtype, tol, monkeypatch
):
    model = model_of(norm=norm, positions=positions, attention=backend, dtype=dtype)
    src = sources()
    tgt = torch.randint(3, VOCAB, (src.size(0), 9), generator=torch.Generator().manual_seed(2))
    full = model(src, tgt)  # (B, T, V)
    calls = spy_on_backends(monkeypatch)
    cache = model.start_decoding(src, tgt.size(1))
    stepwise = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(tgt.size(1))], dim=1)
    torch.testing.assert_close(stepwise, full, rtol=tol, atol=tol)
    # Encoder: 2 layers once; decoder: 2 layers x (self + cross) per step.
    other = "sdpa" if backend == "manual" else "manual"
    assert calls == {backend: 2 + 2 * 2 * tgt.size(1), other: 0}


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_greedy_matches_the_full_recompute_greedy_decode(seed):
    model = model_of(seed)
    src = sources(seed=seed + 10)
    out = decoding.greedy(model, src, 12, GO, STOP)
    assert torch.equal(out, full_recompute_greedy(model, src, 12, GO, STOP))
    assert 0 < sum(STOP in row for row in out.tolist()) < len(out)  # some rows stop early, not all


@pytest.mark.parametrize("seed", range(4))
def test_beam_of_one_is_greedy_exactly(seed):
    model = model_of(seed, dtype=torch.float32)
    src = sources(batch=8, seed=seed + 20)
    sequences, scores = decoding.beam_search(model, src, 14, GO, STOP, beam_size=1)
    assert torch.equal(sequences, decoding.greedy(model, src, 14, GO, STOP))
    torch.testing.assert_close(scores, decoding.sequence_score(model, src, sequences, STOP), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_finds_a_score_at_least_greedys(seed):
    model = model_of(seed, stop_bias=0.5)
    src = sources(batch=8, seed=seed + 30)
    greedy = decoding.greedy(model, src, 14, GO, STOP)
    beam, beam_scores = decoding.beam_search(model, src, 14, GO, STOP, beam_size=5)
    greedy_scores = decoding.sequence_score(model, src, greedy, STOP)
    torch.testing.assert_close(beam_scores, decoding.sequence_score(model, src, beam, STOP))
    # Beam search sums its log-probabilities in float32 (decoding.py): a tie with greedy's
    # hypothesis can come out one float32 step (1.2e-7 near 1) below it.
    assert (beam_scores >= greedy_scores - 1e-6).all()
    assert (beam_scores > greedy_scores + 1e-6).any()  # and beats it somewhere
    assert (beam[:, 0] == GO).all()
    for row in beam.tolist():
        if STOP in row:
            assert all(tok == PAD for tok in row[row.index(STOP) + 1 :])


class _Scripted:
    """Stands in for the model's decoding cache: next-token probabilities depend on the prefix.

    After <go>: A 0.6, B 0.4. After A: A, B, <stop> a third each. After B: <stop> 0.99.
    Greedy takes A then <stop>: (ln 0.6 + ln 1/3) / 2 = -0.805; beam search of width 2
    keeps B and finds B <stop>: (ln 0.4 + ln 0.99) / 2 = -0.463.
    """

    A, B = 3, 4

    def __init__(self, src, steps):
        self.prefixes = [[] for _ in range(src.size(0))]

    def step(self, tokens):
        probs = torch.full((len(tokens), 5), 1e-9, dtype=torch.float64)
        for row, (prefix, token) in enumerate(zip(self.prefixes, tokens.tolist())):
            prefix.append(token)
            if prefix == [GO]:
                probs[row, [self.A, self.B]] = torch.tensor([0.6, 0.4], dtype=torch.float64)
            elif prefix[-1] == self.A:
                probs[row, [self.A, self.B, STOP]] = 1 / 3
            elif prefix[-1] == self.B:
                probs[row, [STOP, self.A]] = torch.tensor([0.99, 0.01], dtype=torch.float64)
            else:
                probs[row, PAD] = 1.0
        return probs.log()

    def reorder(self, parents):
        self.prefixes = [list(self.prefixes[r]) for r in parents.tolist()]

    def keep(self, rows):
        self.prefixes = [self.prefixes[r] for r in rows.tolist()]


def test_beam_search_keeps_the_hypothesis_greedy_drops(monkeypatch):
    model = model_of()
    monkeypatch.setattr(model, "start_decoding", _Scripted)
    monkeypatch.setattr(model, "decode_step", lambda tokens, cache: cache.step(tokens))
    src = sources(batch=2)
    greedy, greedy_score = decoding.beam_search(model, src, 6, GO, STOP, beam_size=1)
    beam, beam_score = decoding.beam_search(model, src, 6, GO, STOP, beam_size=2)
    assert greedy.tolist() == [[GO, _Scripted.A, STOP]] * 2
    assert beam.tolist() == [[GO, _Scripted.B, STOP]] * 2
    assert greedy_score.tolist() == pytest.approx([(math.log(0.6) + math.log(1 / 3)) / 2] * 2)
    assert beam_score.tolist() == pytest.approx([(math.log(0.4) + math.log(0.99)) / 2] * 2)


def test_decoding_restores_training_mode_and_refuses_lengths_past_max_len():
    model = model_of(dropout=0.1).train()
    decoding.beam_search(model, sources(), 8, GO, STOP, beam_size=3)
    assert model.training
    with pytest.raises(ValueError, match="max_len 17"):
        decoding.greedy(model, sources(), 17, GO, STOP)
