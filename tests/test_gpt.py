"""Decoder-only LM: shapes, causality, backends, parameter counts, tying, norms, learning."""

import pytest
import torch
import torch.nn.functional as F

from decoding_helpers import spy_on_backends
from tdiag.config import ModelConfig
from tdiag.models import build_model
from tdiag.models.attention import MultiHeadAttention
from tdiag.models.gpt import GPT

VOCAB = 13


def tiny(**overrides) -> ModelConfig:
    fields = dict(arch="gpt", d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=16)
    return ModelConfig(**{**fields, **overrides})


def model_of(cfg: ModelConfig, vocab: int = VOCAB, dtype=torch.float64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return build_model(cfg, src_vocab=1, tgt_vocab=vocab).to(dtype).eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared tensors are counted once


def test_build_model_gives_a_gpt_over_the_target_vocabulary():
    model = model_of(tiny(n_layers=3))
    assert isinstance(model, GPT)
    assert isinstance(model.layers, torch.nn.ModuleList) and len(model.layers) == 3
    assert model(tokens(3, 7)).shape == (3, 7, VOCAB)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_is_causal(norm, attention):
    model = model_of(tiny(norm=norm, attention=attention))
    x, t = tokens(2, 8), 3
    changed = x.clone()
    changed[:, t + 1 :] = (x[:, t + 1 :] + 1) % VOCAB
    before, after = model(x), model(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], atol=1e-10, rtol=0)
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_cached_generation_uses_the_configured_backend_and_gives_the_full_forward_logits(norm, backend, monkeypatch):
    model = model_of(tiny(norm=norm, attention=backend))
    x = tokens(2, 10)
    full = model(x)  # (B, T, V)
    calls = spy_on_backends(monkeypatch)
    cache = model.start_decoding(10)
    # A prompt of 4 into the empty cache, then one token per call.
    stepwise = torch.cat([model(x[:, :4], cache)] + [model(x[:, t : t + 1], cache) for t in range(4, 10)], dim=1)
    torch.testing.assert_close(stepwise, full, rtol=1e-9, atol=1e-9)
    other = "sdpa" if backend == "manual" else "manual"
    assert calls == {backend: 2 * 7, other: 0}  # 2 layers x 7 calls


def test_cached_generation_refuses_several_new_positions_at_once_and_positions_past_max_len():
    model = model_of(tiny())
    cache = model.start_decoding(16)
    model(tokens(1, 3), cache)
    with pytest.raises(ValueError, match="one new position per call"):
        model(tokens(1, 2), cache)
    cache = model.start_decoding(16)
    model(tokens(1, 16), cache)
    with pytest.raises(ValueError, match="input length 17 exceeds the model's max_len 16"):
        model(tokens(1, 1), cache)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_manual_and_sdpa_agree(norm):
    manual = model_of(tiny(norm=norm, attention="manual"), dtype=torch.float32)
    sdpa = model_of(tiny(norm=norm, attention="sdpa"), dtype=torch.float32, seed=5)
    sdpa.load_state_dict(manual.state_dict())
    x = tokens(3, 10)
    torch.testing.assert_close(manual(x), sdpa(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d_model, n_heads, expected", [(16, 2, 4 * 16 * 17), (768, 12, 2_362_368)])
def test_attention_parameter_count(d_model, n_heads, expected):
    """W_Q, W_K, W_V, W_O, each d x d plus a bias: 4 d (d + 1)."""
    model = model_of(tiny(d_model=d_model, n_heads=n_heads, n_layers=1, d_ff=8, max_len=4), dtype=torch.float32)
    attn = model.layers[0].self_attn
    assert isinstance(attn, MultiHeadAttention) and attn.d_k == d_model // n_heads
    assert n_params(attn) == expected == 4 * d_model * (d_model + 1)


def test_tied_embeddings_share_storage_and_save_v_times_d():
    untied = model_of(tiny())
    tied = model_of(tiny(tie_embeddings=True))
    assert tied.output.weight is tied.embed.tokens.weight
    assert tied.output.weight.data_ptr() == tied.embed.tokens.weight.data_ptr()
    assert untied.output.weight.data_ptr() != untied.embed.tokens.weight.data_ptr()
    assert n_params(untied) - n_params(tied) == VOCAB * 16
    # The shared matrix keeps the embedding's N(0, 1/d) initialisation, not Xavier's.
    assert tied.embed.tokens.weight.std().item() == pytest.approx(16**-0.5, rel=0.2)
    # One gradient reaches the shared matrix from both uses.
    tied.train()
    tied(tokens(2, 5)).sum().backward()
    assert tied.embed.tokens.weight.grad is tied.output.weight.grad


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_norm_variants_run(norm):
    model = model_of(tiny(norm=norm))
    assert isinstance(model.norm, torch.nn.LayerNorm if norm == "pre" else torch.nn.Identity)
    logits = model(tokens(2, 6))
    assert logits.shape == (2, 6, VOCAB) and torch.isfinite(logits).all()


def test_inputs_longer_than_max_len_are_refused():
    model = model_of(tiny(max_len=8))
    assert model(tokens(1, 8)).shape == (1, 8, VOCAB)
    with pytest.raises(ValueError, match="input length 9 exceeds the model's max_len 8"):
        model(tokens(1, 9))


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_overfits_one_batch(tie_embeddings):
    """Gradients reach every part: a tiny model memorises the next token of one batch."""
    model = model_of(tiny(d_model=32, n_layers=1, d_ff=64, tie_embeddings=tie_embeddings), dtype=torch.float32)
    model.train()
    x = tokens(8, 12)
    inputs, targets = x[:, :-1], x[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(inputs).reshape(-1, VOCAB), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
