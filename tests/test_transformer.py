"""Encoder-decoder Transformer: variants, masking, decoding, initialisation, learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from decoding_helpers import full_recompute_greedy
from tdiag.config import InitConfig, ModelConfig
from tdiag.models import build_model, decoding
from tdiag.models.attention import MultiHeadAttention

PAD, GO, STOP = 0, 1, 2
VOCAB = 12


def tiny(**overrides) -> ModelConfig:
    fields = dict(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=32, max_len=16)
    return ModelConfig(**{**fields, **overrides})


def model_of(cfg: ModelConfig, vocab: int = VOCAB, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, vocab, vocab, PAD).to(dtype).eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """Content tokens only: never PAD, GO or STOP."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def attention_blocks(model):
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


VARIANTS = [
    (norm, positions, attention)
    for norm in ("pre", "post")
    for positions in ("learned", "sinusoidal")
    for attention in ("manual", "sdpa")
]


@pytest.mark.parametrize("norm, positions, attention", VARIANTS)
def test_logits_shape(norm, positions, attention):
    model = model_of(tiny(norm=norm, positions=positions, attention=attention))
    src, tgt_in = tokens(3, 7), tokens(3, 5, seed=2)
    memory = model.encode(src)
    assert memory.shape == (3, 7, 16)
    assert model.decode(memory, src, tgt_in).shape == (3, 5, VOCAB)
    assert model(src, tgt_in).shape == (3, 5, VOCAB)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_manual_and_sdpa_models_agree(norm):
    manual = model_of(tiny(norm=norm, attention="manual"), dtype=torch.float32)
    sdpa = model_of(tiny(norm=norm, attention="sdpa"), dtype=torch.float32, seed=5)
    sdpa.load_state_dict(manual.state_dict())
    src, tgt_in = tokens(3, 7), tokens(3, 5, seed=2)
    src[1, 4:] = PAD
    tgt_in[2, 3:] = PAD
    torch.testing.assert_close(manual(src, tgt_in), sdpa(src, tgt_in), atol=1e-5, rtol=1e-5)


def test_module_structure_for_hooks():
    model = model_of(tiny(n_encoder_layers=3, n_decoder_layers=2))
    assert isinstance(model.encoder.layers, torch.nn.ModuleList) and len(model.encoder.layers) == 3
    assert isinstance(model.decoder.layers, torch.nn.ModuleList) and len(model.decoder.layers) == 2
    assert model.generator.out_features == VOCAB


@pytest.mark.parametrize("norm, positions, attention", VARIANTS)
def layer_normalised(x: torch.Tensor) -> bool:
    """Each position has mean 0 and variance 1 over d, as LayerNorm with unit gain leaves it."""
    mean, var = x.mean(-1), x.var(-1, unbiased=False)
    return torch.allclose(mean, torch.zeros_like(mean), atol=1e-6) and torch.allclose(
        var, torch.ones_like(var), atol=1e-3
    )


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_norm_placement(norm):
    """Post-norm: every layer's output is normalised. Pre-norm: the residual stream is not,
    and a final LayerNorm normalises each stack's output."""
    model = model_of(tiny(norm=norm))
    outputs = []

    def record(module, args, out):
        outputs.append(out)

    hooks = [layer.register_forward_hook(record) for layer in model.encoder.layers]
    src, tgt_in = tokens(2, 6), tokens(2, 4, seed=2)
    memory = model.encode(src)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 2
    assert all(layer_normalised(out) == (norm == "post") for out in outputs)
    assert layer_normalised(memory)
    assert layer_normalised(model.decoder(model.tgt_embed(tgt_in), memory, src == PAD))


@pytest.mark.parametrize("norm, positions, attention", VARIANTS)
def test_decoder_is_causal(norm, positions, attention):
    model = model_of(tiny(norm=norm, positions=positions, attention=attention))
    src, tgt_in = tokens(2, 6), tokens(2, 6, seed=2)
    t = 2
    changed = tgt_in.clone()
    changed[:, t + 1 :] = tokens(2, 6 - t - 1, seed=3)
    before, after = model(src, tgt_in), model(src, changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], atol=1e-10, rtol=0)
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_source_padding_does_not_change_logits(positions, attention):
    model = model_of(tiny(positions=positions, attention=attention))
    src, tgt_in = tokens(2, 5), tokens(2, 4, seed=2)
    padded = torch.cat([src, torch.full((2, 3), PAD)], dim=1)
    torch.testing.assert_close(model(src, tgt_in), model(padded, tgt_in), atol=1e-10, rtol=0)


def test_target_padding_does_not_change_earlier_logits():
    model = model_of(tiny())
    src, tgt_in = tokens(2, 5), tokens(2, 6, seed=2)
    padded = tgt_in.clone()
    padded[:, 4:] = PAD
    torch.testing.assert_close(model(src, tgt_in)[:, :4], model(src, padded)[:, :4], atol=1e-10, rtol=0)


def test_inputs_longer_than_max_len_are_refused():
    model = model_of(tiny(max_len=8))
    with pytest.raises(ValueError, match="source length 9 exceeds the model's max_len 8"):
        model.encode(tokens(1, 9))
    with pytest.raises(ValueError, match="target length 9 exceeds the model's max_len 8"):
        model(tokens(1, 4), tokens(1, 9))


def test_unknown_arch_is_refused():
    cfg = tiny().model_copy(update={"arch": "decoder_only"})
    with pytest.raises(ValueError, match="unknown model.arch 'decoder_only'"):
        build_model(cfg, VOCAB, VOCAB)


# ------------------------------------------------------------------ greedy decoding


def test_full_recompute_greedy_oracle_scripted(monkeypatch):
    """The test oracle for `decoding.greedy` (tests/decoding_helpers.py), checked against a
    script: rows stop at different steps, later positions are PAD, and decoding ends early."""
    model = model_of(tiny(dropout=0.1)).train()
    script = torch.tensor([[5, STOP, 7, 7, 7, 7, 7], [5, 6, 7, STOP, 8, 8, 8]])
    modes = []

    def decode(memory, src, tgt_in):
        modes.append(model.training)
        return F.one_hot(script[:, : tgt_in.size(1)], VOCAB).double()  # (B, T, V)

    monkeypatch.setattr(model, "decode", decode)
    out = full_recompute_greedy(model, tokens(2, 4), max_len=8, go_id=GO, stop_id=STOP)
    assert out.dtype == torch.long
    assert out.tolist() == [[GO, 5, STOP, PAD, PAD], [GO, 5, 6, 7, STOP]]
    assert modes and not any(modes)
    assert model.training


@pytest.mark.parametrize("training", [True, False])
def test_greedy_real_model(training):
    model = model_of(tiny(dropout=0.1)).train(training)
    # A STOP bias makes some rows, not all, stop early, so PAD-after-STOP is exercised.
    with torch.no_grad():
        model.generator.bias[STOP] = 2.0
    out = decoding.greedy(model, tokens(8, 6), max_len=10, go_id=GO, stop_id=STOP)
    # Decoding runs without dropout whatever the caller's mode, as the oracle does.
    assert torch.equal(out, full_recompute_greedy(model, tokens(8, 6), max_len=10, go_id=GO, stop_id=STOP))
    assert out.shape[0] == 8 and 1 <= out.shape[1] <= 10
    assert (out[:, 0] == GO).all()
    stops = [row.index(STOP) for row in out.tolist() if STOP in row]
    assert 0 < len(stops) < 8
    for row in out.tolist():
        if STOP in row:
            assert all(tok == PAD for tok in row[row.index(STOP) + 1 :])
    assert model.training == training


def test_greedy_refuses_length_beyond_max_len():
    model = model_of(tiny(max_len=8))
    with pytest.raises(ValueError, match="max_len 9"):
        decoding.greedy(model, tokens(1, 4), max_len=9, go_id=GO, stop_id=STOP)


# ------------------------------------------------------------------ initialisation


@pytest.mark.parametrize("embedding_std, expected", [("one", 1.0), ("inv_sqrt_d", 1 / 16)])
def test_token_embedding_std(embedding_std, expected):
    init = InitConfig(embedding_std=embedding_std)
    cfg = tiny(d_model=256, n_encoder_layers=1, n_decoder_layers=1, init=init)
    model = model_of(cfg, vocab=4000, dtype=torch.float32)
    for table in (model.src_embed.tokens.weight, model.tgt_embed.tokens.weight):
        # 1M samples: the std estimate is within ~0.1% of the truth.
        assert table.std().item() == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("embedding_std", ["one", "inv_sqrt_d"])
def test_learned_position_std_ratio(embedding_std):
    init = InitConfig(embedding_std=embedding_std, position_std_ratio=0.25)
    cfg = tiny(d_model=256, n_encoder_layers=1, n_decoder_layers=1, max_len=512, init=init)
    model = model_of(cfg, vocab=4000, dtype=torch.float32)
    token_std = model.tgt_embed.tokens.weight.std().item()
    for positions in (model.src_embed.positions, model.tgt_embed.positions):
        assert positions.table.weight.std().item() / token_std == pytest.approx(0.25, rel=0.02)


def test_linears_are_xavier_with_zero_bias():
    model = model_of(tiny(d_ff=64))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            bound = math.sqrt(6 / (module.in_features + module.out_features))
            assert module.weight.abs().max() <= bound
            # Uniform on [-a, a] has std a / sqrt(3); loose because the layers are small.
            assert module.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.25)
            assert (module.bias == 0).all()


@pytest.mark.parametrize("tie, tied, apart", [("none", [], ["w_k", "w_v"]),
                                               ("qk", ["w_k"], ["w_v"]),
                                               ("qkv", ["w_k", "w_v"], [])])
def test_tied_projections_start_equal_and_train_apart(tie, tied, apart):
    model = model_of(tiny(init=InitConfig(tie=tie))).train()
    blocks = attention_blocks(model)
    assert len(blocks) == 2 + 2 * 2

    def part(attn, name):
        weight, bias = attn.w_qkv.part(name)
        return weight.detach().clone(), bias.detach().clone()

    for attn in blocks:
        w_q, b_q = part(attn, "w_q")
        for name in tied:
            weight, bias = part(attn, name)
            assert torch.equal(w_q, weight) and torch.equal(b_q, bias)
        for name in apart:
            assert not torch.equal(w_q, part(attn, name)[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(tokens(2, 5), tokens(2, 4, seed=2)).pow(2).mean().backward()
    optimizer.step()
    for attn in blocks:
        w_q, b_q = part(attn, "w_q")
        for name in tied:
            weight, bias = part(attn, name)
            assert not torch.equal(w_q, weight) and not torch.equal(b_q, bias)


def test_packed_projections_are_each_a_xavier_d_by_d_matrix():
    """W_Q, W_K, W_V share one (3d, d) parameter but each is initialised as the d x d
    projection it is: Xavier's bound is sqrt(6 / 2d), not the packed shape's sqrt(6 / 4d)."""
    d = 64
    model = model_of(tiny(d_model=d, n_heads=2), dtype=torch.float32)
    bound = math.sqrt(6 / (2 * d))
    for attn in attention_blocks(model):
        assert attn.w_qkv.weight.shape == (3 * d, d)
        for name in ("w_q", "w_k", "w_v"):
            weight, bias = attn.w_qkv.part(name)
            assert weight.abs().max() <= bound and (bias == 0).all()
            assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_self_attention_in_one_product_equals_three_separate_projections():
    attn = attention_blocks(model_of(tiny()))[0]
    x = torch.randn(2, 5, attn.w_o.in_features, dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    torch.testing.assert_close(attn(x, x, pad), attn(x, x.clone(), pad), rtol=0, atol=1e-12)  # packed vs split


def test_zero_wo():
    for attn in attention_blocks(model_of(tiny(init=InitConfig(zero_wo=True)))):
        assert (attn.w_o.weight == 0).all() and (attn.w_o.bias == 0).all()
        assert (attn.w_qkv.part("w_v")[0] != 0).any()
    for attn in attention_blocks(model_of(tiny())):
        assert (attn.w_o.weight != 0).any()


def test_sinusoidal_positions_follow_section_3_5():
    d = 16
    model = model_of(tiny(d_model=d, positions="sinusoidal"))
    table = model.src_embed.positions(16)
    assert table.shape == (16, d)
    for pos in (0, 1, 7, 15):
        for i in (0, 3, 7):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert not any(name.endswith("positions.table") for name in model.state_dict())


# ------------------------------------------------------------------ learning


def test_overfits_one_copy_batch():
    """Gradients reach every part: a tiny model learns to copy one batch."""
    cfg = tiny(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64)
    model = model_of(cfg, dtype=torch.float32).train()
    content = tokens(16, 5)
    src = torch.cat([content, torch.full((16, 1), STOP)], dim=1)  # (B, 6)
    tgt_in = torch.cat([torch.full((16, 1), GO), content], dim=1)  # (B, 6)
    tgt_out = src
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = F.cross_entropy(model(src, tgt_in).reshape(-1, VOCAB), tgt_out.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    decoded = decoding.greedy(model, src, max_len=10, go_id=GO, stop_id=STOP)
    # Every row ends on STOP at the same step, so decoding stops there: [GO, copy..., STOP].
    assert torch.equal(decoded, torch.cat([torch.full((16, 1), GO), tgt_out], dim=1))
