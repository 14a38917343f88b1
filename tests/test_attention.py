"""Multi-head attention: both backends, their agreement, masking, gradients, dropout."""

import pytest
import torch

from tdiag.models.attention import MultiHeadAttention

BACKENDS = ("manual", "sdpa")


def pair(d_model=16, n_heads=4, dropout=0.0, dtype=torch.float32):
    """A manual and an sdpa block with the same weights."""
    torch.manual_seed(0)
    manual = MultiHeadAttention(d_model, n_heads, dropout, "manual").to(dtype)
    sdpa = MultiHeadAttention(d_model, n_heads, dropout, "sdpa").to(dtype)
    sdpa.load_state_dict(manual.state_dict())
    return manual.eval(), sdpa.eval()


def right_padding(lengths, total):
    """(B, total) bool, True past each row's length."""
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_shape_follows_queries(backend):
    attn = MultiHeadAttention(16, 4, 0.0, backend)
    x_q, x_kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    assert attn(x_q, x_kv).shape == (3, 5, 16)
    assert attn(x_q, x_kv, right_padding([7, 4, 1], 7)).shape == (3, 5, 16)


@pytest.mark.parametrize("padded, causal", [(True, False), (False, True), (True, True), (False, False)])
def test_manual_and_sdpa_agree(padded, causal):
    manual, sdpa = pair()
    torch.manual_seed(1)
    x = torch.randn(3, 6, 16)
    mask = right_padding([6, 4, 2], 6) if padded else None
    torch.testing.assert_close(manual(x, x, mask, causal), sdpa(x, x, mask, causal), atol=1e-5, rtol=1e-5)


def test_manual_and_sdpa_agree_on_cross_attention():
    manual, sdpa = pair()
    torch.manual_seed(1)
    x_q, x_kv = torch.randn(3, 4, 16), torch.randn(3, 6, 16)
    mask = right_padding([6, 3, 1], 6)
    torch.testing.assert_close(manual(x_q, x_kv, mask), sdpa(x_q, x_kv, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d_model, n_heads, expected", [(16, 4, 4 * 16 * 17), (768, 12, 2_362_368)])
def test_parameter_count(d_model, n_heads, expected):
    attn = MultiHeadAttention(d_model, n_heads, 0.0, "manual")
    assert sum(p.numel() for p in attn.parameters()) == expected == 4 * d_model * (d_model + 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_causal_output_ignores_the_future(backend, with_mask):
    attn = MultiHeadAttention(16, 4, 0.0, backend).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    # An all-False padding mask takes the boolean-mask path instead of is_causal.
    mask = right_padding([6, 6], 6) if with_mask else None
    t = 2
    changed = x.clone()
    changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :])
    before, after = attn(x, x, mask, causal=True), attn(changed, changed, mask, causal=True)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], atol=1e-12, rtol=0)
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_keys_have_no_influence(backend):
    attn = MultiHeadAttention(16, 4, 0.0, backend).double().eval()
    lengths = [5, 3]
    mask = right_padding(lengths, 5)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    changed = torch.where(mask[:, :, None], torch.randn_like(x), x)
    for causal in (False, True):
        before, after = attn(x, x, mask, causal), attn(changed, changed, mask, causal)
        for row, length in enumerate(lengths):
            torch.testing.assert_close(before[row, :length], after[row, :length], atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_give_no_nan(backend):
    attn = MultiHeadAttention(8, 2, 0.0, backend)
    x = torch.randn(2, 3, 8, requires_grad=True)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    out = attn(x, x, mask, causal=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    # An empty row carries no values, only W_O's bias.
    torch.testing.assert_close(out[0], attn.w_o.bias.expand(3, 8))


def test_manual_backend_gradcheck():
    torch.manual_seed(0)
    attn = MultiHeadAttention(4, 2, 0.0, "manual").double()
    names = [name for name, _ in attn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in attn.parameters())
    x_q = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    x_kv = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = right_padding([3, 2], 3)

    def f(x_q, x_kv, *values):
        return torch.func.functional_call(attn, dict(zip(names, values)), (x_q, x_kv, mask, True))

    assert torch.autograd.gradcheck(f, (x_q, x_kv, *params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_only_in_training(backend):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, 0.5, backend)
    x = torch.randn(2, 6, 16)
    attn.train()
    assert not torch.allclose(attn(x, x), attn(x, x))
    attn.eval()
    without = MultiHeadAttention(16, 4, 0.0, backend).eval()
    without.load_state_dict(attn.state_dict())
    torch.testing.assert_close(attn(x, x), without(x, x), atol=0, rtol=0)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        MultiHeadAttention(16, 4, 0.0, "flash")
