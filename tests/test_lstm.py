"""LSTM: the from-scratch stack against nn.LSTM, and the language model around either."""

import pytest
import torch
import torch.nn.functional as F

from tdiag.config import ModelConfig
from tdiag.models import build_model
from tdiag.models.lstm import LSTMCellScratch, LSTMLanguageModel, LSTMScratch

VOCAB = 11
INPUT, HIDDEN, BATCH, STEPS = 5, 7, 3, 6


def reference_and_scratch(num_layers: int, dropout: float = 0.0):
    """An nn.LSTM and an LSTMScratch holding the nn.LSTM's weights."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(INPUT, HIDDEN, num_layers, dropout=dropout, batch_first=True)
    scratch = LSTMScratch(INPUT, HIDDEN, num_layers, dropout=dropout)
    assert scratch.state_dict().keys() == reference.state_dict().keys()
    scratch.load_state_dict(reference.state_dict())
    return reference, scratch


def initial_state(num_layers: int):
    generator = torch.Generator().manual_seed(2)
    return tuple(torch.randn(num_layers, BATCH, HIDDEN, generator=generator) for _ in range(2))


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_scratch_matches_nn_lstm(num_layers, with_state):
    reference, scratch = reference_and_scratch(num_layers)
    x = torch.randn(BATCH, STEPS, INPUT, generator=torch.Generator().manual_seed(1))
    state = initial_state(num_layers) if with_state else None
    out_ref, (h_ref, c_ref) = reference(x, state)
    out, (h, c) = scratch(x, state)
    assert out.shape == (BATCH, STEPS, HIDDEN) and h.shape == c.shape == (num_layers, BATCH, HIDDEN)
    for mine, theirs in ((out, out_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_scratch_gradients_match_nn_lstm(num_layers):
    reference, scratch = reference_and_scratch(num_layers)
    grads = []
    for module in (reference, scratch):
        x = torch.randn(BATCH, STEPS, INPUT, generator=torch.Generator().manual_seed(1), requires_grad=True)
        h0, c0 = (s.requires_grad_() for s in initial_state(num_layers))
        out, (h, c) = module(x, (h0, c0))
        # Weight every output differently so a swapped gate or step would show.
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        ((out * weights).sum() + h.pow(2).sum() + c.sum()).backward()
        named = {name: p.grad for name, p in module.named_parameters()}
        grads.append({"x": x.grad, "h0": h0.grad, "c0": c0.grad, **named})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5, msg=name)


def test_cell_matches_nn_lstm_cell():
    torch.manual_seed(0)
    reference = torch.nn.LSTMCell(INPUT, HIDDEN)
    cell = LSTMCellScratch(INPUT, HIDDEN)
    cell.load_state_dict(reference.state_dict())
    x = torch.randn(BATCH, INPUT)
    state = initial_state(1)
    state = (state[0][0], state[1][0])
    for mine, theirs in zip(cell(x, state), reference(x, state)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(cell(x), reference(x)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_scratch_dropout_acts_in_training_only():
    _, scratch = reference_and_scratch(2, dropout=0.5)
    x = torch.randn(BATCH, STEPS, INPUT)
    torch.manual_seed(3)
    first = scratch.train()(x)[0]
    torch.manual_seed(4)
    assert not torch.allclose(first, scratch(x)[0])
    scratch.eval()
    torch.testing.assert_close(scratch(x)[0], scratch(x)[0], atol=0, rtol=0)


# ------------------------------------------------------------------ language model


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(arch="lstm", d_model=8, n_layers=2), **overrides})


def lm_of(cfg: ModelConfig, seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return build_model(cfg, src_vocab=1, tgt_vocab=VOCAB).eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared tensors are counted once


@pytest.mark.parametrize("impl", ["fused", "scratch"])
@pytest.mark.parametrize("hidden_size", [None, 12])
def test_lm_runs(impl, hidden_size):
    model = lm_of(tiny(lstm_impl=impl, hidden_size=hidden_size, dropout=0.2)).train()
    assert isinstance(model, LSTMLanguageModel)
    assert isinstance(model.rnn, torch.nn.LSTM if impl == "fused" else LSTMScratch)
    logits, (h, c) = model(tokens(3, 5))
    width = hidden_size or 8
    assert logits.shape == (3, 5, VOCAB)
    assert h.shape == c.shape == (2, 3, width)
    F.cross_entropy(logits.reshape(-1, VOCAB), tokens(3, 5, seed=2).reshape(-1)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lm_impls_agree_with_the_same_weights():
    fused = lm_of(tiny(lstm_impl="fused"))
    scratch = lm_of(tiny(lstm_impl="scratch"), seed=7)
    scratch.load_state_dict(fused.state_dict())
    x = tokens(3, 6)
    (logits, (h, c)), (logits_ref, (h_ref, c_ref)) = scratch(x), fused(x)
    for mine, theirs in ((logits, logits_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_lm_init_is_uniform_point_one():
    model = lm_of(tiny(d_model=64))
    for weight in (model.embedding.weight, model.output.weight):
        assert weight.abs().max() <= 0.1 and weight.abs().max() > 0.09
    assert (model.output.bias == 0).all()


def test_lm_tied_embeddings():
    untied, tied = lm_of(tiny()), lm_of(tiny(tie_embeddings=True))
    assert tied.output.weight is tied.embedding.weight
    assert tied.output.weight.data_ptr() == tied.embedding.weight.data_ptr()
    assert n_params(untied) - n_params(tied) == VOCAB * 8
    assert tied(tokens(2, 4))[0].shape == (2, 4, VOCAB)


@pytest.mark.parametrize("impl", ["fused", "scratch"])
def test_state_carries_over(impl):
    """Two halves fed with the returned state give what the whole sequence gives."""
    model = lm_of(tiny(lstm_impl=impl))
    x = tokens(3, 10)
    whole, (h_whole, c_whole) = model(x)
    first, state = model(x[:, :4], model.init_state(3, x.device))
    second, (h, c) = model(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h, h_whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c, c_whole, atol=1e-6, rtol=1e-6)
    # Without the state the second half starts from zeros and differs.
    assert not torch.allclose(model(x[:, 4:])[0], second)


def test_init_state_is_zero_in_the_model_dtype():
    model = lm_of(tiny(hidden_size=12)).double()
    h, c = model.init_state(4, "cpu")
    assert h.shape == c.shape == (2, 4, 12)
    assert h.dtype == torch.float64 and not h.any() and not c.any()
