"""Activation and gradient norms (train/metrics.py): which modules, when recorded, what they equal."""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tdiag.config import ModelConfig
from tdiag.models import build_model
from tdiag.train.metrics import ActivationNorms, GradientNorms, as_floats

VOCAB = 11


def model_of(**fields) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"d_model": 16, "n_heads": 2, "n_layers": 2, "n_encoder_layers": 2, "n_decoder_layers": 1,
                         "d_ff": 32, "max_len": 16, "dropout": 0.0, **fields})
    return build_model(cfg, VOCAB, VOCAB)


def tokens(seed: int, batch: int = 3, length: int = 6) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def forward(model: nn.Module, seed: int) -> torch.Tensor:
    """Logits of a batch, whatever the architecture."""
    x = tokens(seed)
    if model.cfg.arch == "encoder_decoder":
        return model(x, x)
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def token_norm(hidden: torch.Tensor) -> float:
    return float(hidden.norm(dim=-1).mean())


class CheckpointedStack(nn.Module):
    """Blocks applied under non-reentrant activation checkpointing: backward re-runs them."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = checkpoint(layer, x, use_reentrant=False)
        return x


def test_activation_norms_are_the_mean_over_a_steps_micro_batches_and_skip_recomputes():
    torch.manual_seed(0)
    model = CheckpointedStack()
    norms = ActivationNorms(model)
    inputs = [torch.randn(2, 4), 10 * torch.randn(2, 4)]
    for x in inputs:
        with norms.recording():
            out = model(x)
        out.sum().backward()  # re-runs every block's forward, with its hooks
    with torch.no_grad():
        expected = [(token_norm(model.layers[0](x)), token_norm(model.layers[1](model.layers[0](x)))) for x in inputs]
    values = as_floats(norms.pop())
    assert values == pytest.approx({f"act_norm/layer.{i}": (expected[0][i] + expected[1][i]) / 2 for i in (0, 1)})
    model(inputs[0])  # with grad, outside `recording`: as a recompute in backward is
    assert norms.pop() == {}


@pytest.mark.parametrize("impl", ["fused", "scratch"])
def test_lstm_records_its_embedding_and_stack_outputs(impl):
    model = model_of(arch="lstm", lstm_impl=impl)
    norms = ActivationNorms(model)
    with norms.recording():
        forward(model, 1)
    x = tokens(1)
    with torch.no_grad():
        embedded = model.embedding(x)
        expected = {"act_norm/embedding": token_norm(embedded), "act_norm/lstm": token_norm(model.rnn(embedded)[0])}
    assert as_floats(norms.pop()) == pytest.approx(expected)


@pytest.mark.parametrize("arch", ["gpt", "encoder_decoder"])
def test_transformer_activation_norms_name_every_block(arch):
    model = model_of(arch=arch)
    norms = ActivationNorms(model)
    with norms.recording():
        forward(model, 1)
    names = ["layer.0", "layer.1"] if arch == "gpt" else ["encoder.0", "encoder.1", "decoder.0"]
    assert list(norms.pop()) == [f"act_norm/{n}" for n in names]


def grad_norm(parameters) -> float:
    return float(torch.cat([p.grad.flatten() for p in parameters]).norm())


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("arch", ["gpt", "encoder_decoder"])
def test_block_and_final_layer_norm_gradients(arch, norm):
    model = model_of(arch=arch, norm=norm)
    gradients = GradientNorms(model)
    forward(model, 2).logsumexp(-1).mean().backward()
    stack = model.decoder if arch == "encoder_decoder" else model
    final = stack.norm if norm == "pre" else stack.layers[-1].ffn_res.norm
    assert isinstance(final, nn.LayerNorm)
    blocks = ({f"layer.{i}": layer for i, layer in enumerate(model.layers)} if arch == "gpt" else
              {**{f"encoder.{i}": layer for i, layer in enumerate(model.encoder.layers)},
               **{f"decoder.{i}": layer for i, layer in enumerate(model.decoder.layers)}})
    expected = {f"grad_norm/{name}": grad_norm(block.parameters()) for name, block in blocks.items()}
    expected["final_ln/weight_norm"] = float(final.weight.detach().norm())
    expected["final_ln/grad_norm"] = float(final.weight.grad.norm())
    expected["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))  # the global one
    measured = as_floats(gradients.measure())
    assert measured == pytest.approx(expected, rel=1e-5)
    assert measured["final_ln/grad_norm"] > 0


def test_lstm_gradient_norms_per_layer_and_no_final_layer_norm():
    model = model_of(arch="lstm")
    gradients = GradientNorms(model)
    forward(model, 2).logsumexp(-1).mean().backward()
    rnn = dict(model.rnn.named_parameters())
    expected = {f"grad_norm/layer.{i}": grad_norm(p for name, p in rnn.items() if name.endswith(f"_l{i}"))
                for i in (0, 1)}
    expected["grad_norm"] = grad_norm(model.parameters())
    assert as_floats(gradients.measure()) == pytest.approx(expected, rel=1e-5)


def test_a_block_without_gradients_measures_zero():
    model = model_of(arch="gpt", n_layers=1)
    gradients = GradientNorms(model)
    assert as_floats(gradients.measure())["grad_norm/layer.0"] == 0.0
