"""The LMs' output layer: its summed cross-entropy equals F.cross_entropy on its logits,
in value and gradients, on the CPU's chunked path and on the plain one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tdiag import devices
from tdiag.config import TrainConfig
from tdiag.models import vocabulary_head
from tdiag.models.vocabulary_head import VocabularyHead
from tdiag.train.language_model_workload import LanguageModelWorkload
from test_lm_workload import lm_model, prepared

D = 16


@pytest.fixture(autouse=True)
def sliced_at_any_size(monkeypatch):
    """These tests' vocabularies are small: let the sliced path take them all the same."""
    monkeypatch.setattr(vocabulary_head, "MIN_VOCABULARY", 0)


def test_below_the_minimum_vocabulary_it_is_cross_entropy_on_the_logits(monkeypatch):
    layer = head(300)
    monkeypatch.setattr(vocabulary_head, "MIN_VOCABULARY", 301)

    def refused(*args):
        raise AssertionError("sliced below MIN_VOCABULARY")

    monkeypatch.setattr(vocabulary_head._ChunkedLinearCrossEntropy, "apply", refused)
    x, targets = torch.randn(8, D), torch.randint(0, 300, (8,))
    assert layer.summed_cross_entropy(x, targets).item() == plain(layer, x, targets).item()


def head(vocab: int, bias: bool = True, seed: int = 0) -> VocabularyHead:
    torch.manual_seed(seed)
    return VocabularyHead(D, vocab, bias=bias)


def plain(layer: VocabularyHead, x, targets, label_smoothing=0.0):
    return F.cross_entropy(layer(x).float().flatten(0, -2), targets.flatten(),
                           label_smoothing=label_smoothing, reduction="sum")


def loss_and_grads(loss_fn, layer: VocabularyHead, x: torch.Tensor):
    x = x.detach().requires_grad_()
    loss = loss_fn(x)
    return loss.detach(), torch.autograd.grad(loss, [x, *layer.parameters()])


@pytest.mark.parametrize("onednn", [True, False], ids=["oneDNN products", "torch.mm products"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_summed_cross_entropy_equals_cross_entropy_on_the_logits_and_its_gradients(
    label_smoothing, bias, onednn, monkeypatch
):
    monkeypatch.setattr(vocabulary_head, "ONEDNN_PRODUCTS", onednn)
    vocab = 2 * vocabulary_head.slice_rows() + 37  # three slices, the last one short
    layer = head(vocab, bias)
    x, targets = torch.randn(3, 5, D), torch.randint(0, vocab, (3, 5))
    chunked = loss_and_grads(lambda x: layer.summed_cross_entropy(x, targets, label_smoothing), layer, x)
    reference = loss_and_grads(lambda x: plain(layer, x, targets, label_smoothing), layer, x)
    assert chunked[0].item() == pytest.approx(reference[0].item(), rel=1e-6)
    for ours, theirs in zip(chunked[1], reference[1]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(vocabulary_head._ONEDNN_LINEAR is None, reason="this torch has no oneDNN linear")
def test_float32_products_run_on_onednn_where_chosen_unless_it_is_switched_off(monkeypatch):
    calls = []
    monkeypatch.setattr(vocabulary_head, "_ONEDNN_LINEAR", lambda *args: calls.append(1) or torch.mm(args[0], args[1].t()))
    monkeypatch.setattr(vocabulary_head, "ONEDNN_PRODUCTS", True)
    layer = head(2 * vocabulary_head.slice_rows())
    x, targets = torch.randn(4, D, requires_grad=True), torch.randint(0, layer.out_features, (4,))
    layer.summed_cross_entropy(x, targets).backward()
    assert len(calls) == 4  # two slices, forward and backward
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    layer.summed_cross_entropy(x, targets).backward()
    assert len(calls) == 4
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    monkeypatch.setattr(vocabulary_head, "ONEDNN_PRODUCTS", False)  # an Intel CPU: MKL's AVX-512 kernels
    layer.summed_cross_entropy(x, targets).backward()
    assert len(calls) == 4


def test_products_go_to_onednn_except_on_an_intel_cpu():
    assert vocabulary_head.ONEDNN_PRODUCTS == (devices.cpu_vendor() != "GenuineIntel")


def test_cpuinfo_fields_are_read_from_the_first_cpu(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon: the first\n\n"
                       "processor\t: 1\nvendor_id\t: AuthenticAMD\n")
    assert devices.cpuinfo_field("vendor_id", cpuinfo) == "GenuineIntel"
    assert devices.cpuinfo_field("model name", cpuinfo) == "Xeon: the first"
    assert devices.cpuinfo_field("flags", cpuinfo) == ""
    assert devices.cpuinfo_field("vendor_id", tmp_path / "absent") == ""


def test_backward_follows_the_forwards_slices_when_the_thread_count_changes_between(monkeypatch):
    layer = head(11)
    x, targets = torch.randn(6, D), torch.randint(0, 11, (6,))
    monkeypatch.setattr(vocabulary_head, "slice_rows", lambda: 4)
    inputs = x.clone().requires_grad_()
    loss = layer.summed_cross_entropy(inputs, targets)
    monkeypatch.setattr(vocabulary_head, "slice_rows", lambda: 3)  # as if torch.set_num_threads ran
    ours = torch.autograd.grad(loss, [inputs, *layer.parameters()])
    reference = loss_and_grads(lambda x: plain(layer, x, targets), layer, x)[1]
    for got, expected in zip(ours, reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_gradients_pass_gradcheck_in_float64_across_slices(monkeypatch):
    monkeypatch.setattr(vocabulary_head, "slice_rows", lambda: 4)
    layer = head(11).double()
    x, targets = torch.randn(6, D, dtype=torch.float64, requires_grad=True), torch.randint(0, 11, (6,))

    def loss(x, weight, bias):
        return vocabulary_head._ChunkedLinearCrossEntropy.apply(x, weight, bias, targets, 0.2)

    assert torch.autograd.gradcheck(loss, (x, layer.weight, layer.bias))


@pytest.mark.parametrize("scale, offset", [(400.0, 0.0), (1.0, -500.0)], ids=["exp overflows", "exp vanishes"])
def test_logits_beyond_exps_range_still_give_cross_entropys_value(scale, offset):
    layer = head(3000)
    with torch.no_grad():
        layer.weight.mul_(scale)
        layer.bias.add_(offset)
    x, targets = torch.randn(4, D), torch.randint(0, 3000, (4,))
    chunked = loss_and_grads(lambda x: layer.summed_cross_entropy(x, targets), layer, x)
    reference = loss_and_grads(lambda x: plain(layer, x, targets), layer, x)
    assert torch.isfinite(chunked[0])
    assert chunked[0].item() == pytest.approx(reference[0].item(), rel=1e-5)
    for ours, theirs in zip(chunked[1], reference[1]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_nan_input_gives_a_nan_loss():
    layer = head(50)
    x = torch.randn(3, D)
    x[1, 2] = float("nan")
    assert torch.isnan(layer.summed_cross_entropy(x, torch.tensor([1, 2, 3])))


def test_under_autocast_it_is_cross_entropy_on_the_autocast_logits():
    layer = head(300)
    x, targets = torch.randn(8, D), torch.randint(0, 300, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = layer.summed_cross_entropy(x, targets)
        theirs = plain(layer, x, targets)
    assert ours.item() == theirs.item()


@pytest.mark.parametrize("arch, overrides", [("lstm", {}), ("gpt", {}), ("gpt", {"tie_embeddings": True})],
                         ids=["lstm", "gpt", "gpt-tied"])
def test_an_lm_given_targets_returns_the_summed_cross_entropy_of_its_logits(arch, overrides):
    vocab = vocabulary_head.slice_rows() + 5
    tokens, targets = torch.randint(0, vocab, (2, 7)), torch.randint(0, vocab, (2, 7))
    model = lm_model(arch, vocab, **overrides).eval()

    def scored(with_targets: bool):
        model.zero_grad()
        if with_targets:
            out = model(tokens, targets=targets, label_smoothing=0.1)
        else:
            logits = model(tokens)
            logits = logits[0] if arch == "lstm" else logits  # the LSTM returns (logits, state)
            out = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=0.1, reduction="sum")
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}

    (ours, ours_grads), (theirs, their_grads) = scored(True), scored(False)
    assert ours == pytest.approx(theirs, rel=1e-6)
    for name in their_grads:
        torch.testing.assert_close(ours_grads[name], their_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["lstm", "gpt"])
def test_the_lm_workload_trains_and_evaluates_the_project_lms_without_the_logits(tmp_path: Path, arch, monkeypatch):
    folder, meta = prepared(tmp_path)
    workload = LanguageModelWorkload(folder, meta, TrainConfig(epochs=1, max_steps=None, bptt=8, batch_size=4),
                                     torch.device("cpu"))
    model = lm_model(arch, meta["vocab_size"])

    def refused(*args, **kwargs):
        raise AssertionError("the (tokens, V) logits were scored by F.cross_entropy")

    monkeypatch.setattr(F, "cross_entropy", refused)
    batch = workload.train_batch(1, seed=0)
    workload.loss(model, batch.micro[0], batch.n_tokens, 0.1).backward()
    assert workload.evaluate(model, "valid")["tokens"] > 0
