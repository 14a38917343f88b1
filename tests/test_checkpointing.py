"""Activation checkpointing (`model.checkpointing: blocks`): same loss and gradients as
the plain forward, same state-dict keys, really recomputing, and refused for the LSTM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tdiag.config import ModelConfig
from tdiag.models import build_model

VOCAB, PAD = 12, 0
ARCHS = {
    "gpt": dict(arch="gpt", n_layers=2),
    "encoder_decoder": dict(arch="encoder_decoder", n_encoder_layers=2, n_decoder_layers=2),
}


def model_of(arch: str, checkpointing: str, dropout: float = 0.0):
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, max_len=16, dropout=dropout, checkpointing=checkpointing,
                      **ARCHS[arch])
    torch.manual_seed(0)
    return build_model(cfg, VOCAB, VOCAB, PAD).train()


def loss_of(model, arch: str) -> torch.Tensor:
    """A training loss over a fixed batch; a padded source for the encoder-decoder."""
    ids = torch.randint(3, VOCAB, (4, 10), generator=torch.Generator().manual_seed(1))
    if arch == "gpt":
        logits = model(ids[:, :-1])
    else:
        src = ids.clone()
        src[0, 7:] = PAD
        logits = model(src, ids[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def loss_and_grads(arch: str, checkpointing: str, dropout: float):
    model = model_of(arch, checkpointing, dropout)
    torch.manual_seed(5)  # the dropout masks
    loss = loss_of(model, arch)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(arch: str, dropout: float):
    plain_loss, plain = loss_and_grads(arch, "none", dropout)
    loss, checkpointed = loss_and_grads(arch, "blocks", dropout)
    assert torch.equal(loss, plain_loss)
    assert checkpointed.keys() == plain.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_checkpoint_loads_into_either_setting(arch: str):
    plain, checkpointed = model_of(arch, "none"), model_of(arch, "blocks")
    assert list(plain.state_dict()) == list(checkpointed.state_dict())
    checkpointed.load_state_dict(plain.state_dict())


def saved_bytes(model, arch: str) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_of(model, arch)
    loss.backward()
    return total


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointing_saves_less_for_backward_and_recomputes_each_block(arch: str):
    plain, checkpointed = model_of(arch, "none"), model_of(arch, "blocks")
    calls = []
    for layer in checkpointed.modules():
        if hasattr(layer, "ffn_res"):  # a Transformer block
            # A pre-hook: the recompute stops as soon as it has what backward needs,
            # before a forward hook would fire.
            layer.register_forward_pre_hook(lambda *_: calls.append(1))
    blocks = 2 if arch == "gpt" else 4
    assert saved_bytes(checkpointed, arch) < saved_bytes(plain, arch) / 2
    assert len(calls) == 2 * blocks, "each block runs forward once, then again in backward"


@pytest.mark.parametrize("arch", ARCHS)
def test_evaluation_and_no_grad_passes_run_the_blocks_once(arch: str):
    model = model_of(arch, "blocks").eval()
    calls = []
    for layer in model.modules():
        if hasattr(layer, "ffn_res"):
            layer.register_forward_pre_hook(lambda *_: calls.append(1))
    loss_of(model, arch).backward()
    with torch.no_grad():
        loss_of(model.train(), arch)
    assert len(calls) == 2 * (2 if arch == "gpt" else 4)


def test_the_lstm_has_no_blocks_to_checkpoint():
    with pytest.raises(ValueError, match="checkpointing 'blocks'.*arch 'lstm'"):
        ModelConfig(arch="lstm", checkpointing="blocks")
