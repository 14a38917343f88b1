"""The model checks (tdiag.checks): each planted bug fails its own check and no other;
the shipped models pass every check that applies; `tdiag check` writes checks.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tdiag
from tdiag import paths
from tdiag.checks import CHECKS, ENCODER_DECODER, LANGUAGE_MODEL, CheckResult, Subject, run_checks
from tdiag.checks.attention import attention_parameters, attention_parity
from tdiag.checks.runs import CONTRACTS
from tdiag.cli import main
from tdiag.data.kinds import KINDS
from tdiag.config import ModelConfig
from tdiag.models import build_model

V = 11
PAD, GO = 0, 1
D = 16
ALL_ENCODER_DECODER = [c.__name__ for c in CHECKS[ENCODER_DECODER]]
ALL_LANGUAGE_MODEL = [c.__name__ for c in CHECKS[LANGUAGE_MODEL]]


def seq2seq_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four source/target pairs of different lengths, right-padded, targets after <go>."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, V, (4, 7), generator=g)
    tgt = torch.randint(2, V, (4, 8), generator=g)
    tgt[:, 0] = GO
    for row, (s, t) in enumerate([(7, 8), (6, 7), (4, 5), (3, 4)]):
        src[row, s:] = PAD
        tgt[row, t:] = PAD
    return src, tgt


def lm_batch(vocab: int = V) -> tuple[torch.Tensor, torch.Tensor]:
    stream = torch.randint(0, vocab, (4, 13), generator=torch.Generator().manual_seed(0))
    return stream[:, :-1], stream[:, 1:]


class TinyAttention(nn.Module):
    """Multi-head attention in tdiag's exposed layout (tdiag.checks.attention), with two
    plantable departures: scores scaled by 1/d_k instead of 1/sqrt(d_k), and an extra
    learned temperature (one parameter beyond 4d(d+1), initialised so it changes nothing)."""

    def __init__(self, d: int, n_heads: int, wrong_scale: bool = False, temperature: bool = False):
        super().__init__()
        self.n_heads, self.d_k, self.wrong_scale = n_heads, d // n_heads, wrong_scale
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(d, d) for _ in range(4))
        self.temperature = nn.Parameter(torch.ones(())) if temperature else None

    def forward(self, x_q, x_kv, key_padding_mask=None, causal=False):
        b, t_q, d = x_q.shape
        split = lambda x: x.view(b, -1, self.n_heads, self.d_k).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.w_q(x_q)), split(self.w_k(x_kv)), split(self.w_v(x_kv))
        scores = q @ k.transpose(-2, -1) / (self.d_k if self.wrong_scale else math.sqrt(self.d_k))
        if self.temperature is not None:
            scores = scores * self.temperature
        if causal:
            scores = scores.masked_fill(torch.ones(t_q, k.size(2), dtype=torch.bool).triu(1), float("-inf"))
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = scores.softmax(-1) @ v  # (B, h, T_q, d_k)
        return self.w_o(out.transpose(1, 2).reshape(b, t_q, d))


class TinyEncoderDecoder(nn.Module):
    """One encoder layer (single-head attention written out) and one decoder layer, with
    the bugs the checks should catch as flags; all off, a correct model."""

    def __init__(self, leak=False, mask_queries=False, batch_mean=False, detached=False, logit_scale=1.0,
                 bounded=False, noise=False, wrong_scale=False, temperature=False, eval_dropout=False, frozen=False):
        super().__init__()
        self.flags = dict(leak=leak, mask_queries=mask_queries, batch_mean=batch_mean, detached=detached,
                          logit_scale=logit_scale, bounded=bounded, eval_dropout=eval_dropout)
        self.src_embed, self.tgt_embed = nn.Embedding(V, D), nn.Embedding(V, D)
        self.positions = nn.Parameter(torch.randn(16, D) * 0.1, requires_grad=not frozen)  # the bug: frozen
        self.enc_qkv = nn.Linear(D, 3 * D)
        self.self_attn = TinyAttention(D, 2, wrong_scale, temperature)
        self.cross_attn = TinyAttention(D, 2, wrong_scale, temperature)
        self.ffn = nn.Sequential(nn.Linear(D, 4 * D), nn.ReLU(), nn.Linear(4 * D, D))
        self.norm = nn.LayerNorm(D)
        self.out = nn.Linear(D, V)
        self.noise = torch.Generator().manual_seed(torch.Generator().seed()) if noise else None

    def encode(self, src):
        x = self.src_embed(src) + self.positions[: src.size(1)]
        pad = src == PAD
        q, k, v = self.enc_qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, S, S)
        # The bug: the padding mask broadcast over the queries instead of the keys.
        hidden = pad[:, :, None] if self.flags["mask_queries"] else pad[:, None, :]
        return x + scores.masked_fill(hidden, -1e9).softmax(-1) @ v  # (B, S, d)

    def forward(self, src, tgt_in):
        memory = self.encode(src)
        y = self.tgt_embed(tgt_in) + self.positions[: tgt_in.size(1)]
        y = y + self.self_attn(y, y, causal=not self.flags["leak"])
        y = y + self.cross_attn(y, memory, src == PAD)
        # The bug: functional dropout, whose `training` defaults to True whatever model.eval() said.
        y = self.norm(y + (F.dropout(self.ffn(y), 0.1) if self.flags["eval_dropout"] else self.ffn(y)))
        if self.flags["batch_mean"]:
            y = y - y.mean(dim=0, keepdim=True)  # statistics over the batch axis
        if self.noise is not None and self.training:
            y = y + 1e-3 * torch.randn(y.shape, generator=self.noise, dtype=y.dtype)
        bias = self.out.bias.detach() if self.flags["detached"] else self.out.bias
        logits = F.linear(y, self.out.weight, bias) * self.flags["logit_scale"]
        return 0.01 * torch.tanh(logits) if self.flags["bounded"] else logits


def planted(**bugs) -> Subject:
    return Subject(ENCODER_DECODER, lambda seed: TinyEncoderDecoder(**bugs), (V, V), seq2seq_batch(), pad_id=PAD)


BUGS = {
    "none": ({}, set(), ""),
    "causal leak": ({"leak": True}, {"causality"}, "causal leak: logits at position "),
    "mask over the query axis": ({"mask_queries": True}, {"padding_invariance", "padding_attention"}, "padding "),
    "mean over the batch": ({"batch_mean": True}, {"batch_independence"}, "batch coupling: sample "),
    "detached parameter": ({"detached": True}, {"gradient_flow"}, "blocked gradient: 1 of "),
    "frozen parameter": ({"frozen": True}, {"gradient_flow"}, "blocked gradient: 1 of "),
    "logits scaled by 100": ({"logit_scale": 100.0}, {"initial_loss"}, "logit scale at init: loss "),
    "logits squashed": ({"bounded": True}, {"overfit"}, "cannot memorise 2 samples: loss still "),
    "unseeded noise": ({"noise": True}, {"determinism"}, "nondeterminism: same seed, losses differ by "),
    "scores over d_k": ({"wrong_scale": True}, {"attention_parity"}, "attention differs from torch"),
    "extra attention parameter": ({"temperature": True}, {"attention_parameters"}, "attention shape: "),
    "dropout on in eval mode": ({"eval_dropout": True}, {"eval_determinism"}, "randomness at inference: "),
}
SKIPPED_WHEN = {"dropout on in eval mode": {"causality", "padding_invariance", "padding_attention", "batch_independence"}}
"""Checks not run for a bug: those comparing eval passes, where eval_determinism fails."""


@pytest.mark.parametrize("bug", BUGS)
def test_a_planted_bug_fails_its_check_and_no_other(bug: str):
    flags, failing, message = BUGS[bug]
    results = run_checks(planted(**flags))
    assert [r.name for r in results] == [n for n in ALL_ENCODER_DECODER if n not in SKIPPED_WHEN.get(bug, ())]
    assert {r.name for r in results if not r.passed} == failing
    for r in results:
        assert r.passed == (abs(r.measured) <= r.threshold)  # only initial_loss measures a signed gap
        if not r.passed:
            assert r.message.startswith(message), r.message


def test_the_failure_lines_carry_the_measured_numbers():
    leak = {r.name: r for r in run_checks(planted(leak=True))}["causality"]
    assert leak.measured > 1e-3 and f"changed by {leak.measured:.3g}" in leak.message
    detached = {r.name: r for r in run_checks(planted(detached=True))}["gradient_flow"]
    assert detached.measured == 1 and "out.bias (no gradient: detached from the loss)" in detached.message


class GroupedKeysValues(nn.Module):
    """A packed in-projection of another shape than 3d x d (one head of keys and values
    shared by two query heads): not an attention torch's MultiheadAttention can hold."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.n_heads, self.w_o = 2, nn.Linear(d, d)
        self.w_qkv = nn.Linear(d, d + d)  # queries d, keys and values d/2 each

    def forward(self, x):
        return self.w_o(self.w_qkv(x)[..., : x.shape[-1]])


def test_an_in_projection_of_another_shape_is_not_compared_with_torchs_attention():
    subject = Subject(LANGUAGE_MODEL, lambda seed: GroupedKeysValues(), (V, V), lm_batch())
    assert attention_parameters(subject) is None and attention_parity(subject) is None


class TinyLM(nn.Module):
    """A one-layer decoder-only LM returning (logits, state) like an LSTM; `leak` drops the causal mask."""

    def __init__(self, leak: bool = False):
        super().__init__()
        self.leak = leak
        self.embed = nn.Embedding(V, D)
        self.positions = nn.Parameter(torch.randn(16, D) * 0.1)
        self.attn = TinyAttention(D, 2)
        self.out = nn.Linear(D, V)

    def forward(self, tokens):
        x = self.embed(tokens) + self.positions[: tokens.size(1)]
        x = x + self.attn(x, x, causal=not self.leak)
        return self.out(x), None


@pytest.mark.parametrize("leak", [False, True])
def test_a_language_model_with_a_causal_leak_fails_causality_only(leak: bool):
    results = run_checks(Subject(LANGUAGE_MODEL, lambda seed: TinyLM(leak), (V, V), lm_batch()))
    assert [r.name for r in results] == ALL_LANGUAGE_MODEL
    assert {r.name for r in results if not r.passed} == ({"causality"} if leak else set())


SHIPPED = {
    "encoder_decoder manual": dict(arch="encoder_decoder", attention="manual"),
    "encoder_decoder sdpa": dict(arch="encoder_decoder", attention="sdpa"),
    "encoder_decoder post-norm sinusoidal": dict(arch="encoder_decoder", norm="post", positions="sinusoidal"),
    "gpt": dict(arch="gpt", tie_embeddings=True),
    "lstm": dict(arch="lstm", n_layers=1),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_models_pass_every_check_that_applies(name: str):
    cfg = ModelConfig(d_model=32, n_heads=2, d_ff=64, **SHIPPED[name])
    if cfg.arch == "encoder_decoder":
        subject = Subject(ENCODER_DECODER, lambda seed: build_model(cfg, V, V, PAD), (V, V), seq2seq_batch(), PAD)
        expected = ALL_ENCODER_DECODER
    else:
        subject = Subject(LANGUAGE_MODEL, lambda seed: build_model(cfg, 50, 50), (50, 50), lm_batch(50))
        # An LSTM exposes no attention module: those checks do not apply to it.
        expected = [c for c in ALL_LANGUAGE_MODEL if cfg.arch == "gpt" or not c.startswith("attention")]
    results = run_checks(subject)
    assert [r.name for r in results] == expected
    assert [r.message for r in results if not r.passed] == []


def test_the_checks_leave_torch_random_state_as_it_was():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_checks(planted())
    assert torch.equal(torch.rand(3), expected)


def test_a_result_is_json_and_a_non_finite_measurement_a_string():
    record = CheckResult("initial_loss", False, float("nan"), 1.5, "logit scale at init: loss nan").to_json()
    assert json.loads(json.dumps(record)) == {
        "name": "initial_loss", "passed": False, "measured": "nan", "threshold": 1.5,
        "message": "logit scale at init: loss nan",
    }


def test_check_verb_writes_the_runs_checks_and_exits_0_when_one_fails(tiny_project: Path, monkeypatch, capsys):
    done = tdiag("check", "toy", "copy", cwd=tiny_project)
    written = tiny_project / paths.run_checks("toy", "copy")
    record = json.loads(written.read_text())
    assert record["passed"] is True and record["kind"] == "encoder_decoder" and record["seed"] == 0
    assert [c["name"] for c in record["checks"]] == ALL_ENCODER_DECODER
    assert done.stdout.splitlines() == [f"pass {c['name']}: {c['message']}" for c in record["checks"]]

    # W_O zero at init (a shipped option) blocks every gradient behind attention at step 0.
    monkeypatch.chdir(tiny_project)
    assert main(["--set", "studies.toy.model.init.zero_wo=true", "check", "toy", "copy"]) == 0
    record = json.loads(written.read_text())
    assert record["passed"] is False and [c["name"] for c in record["checks"] if not c["passed"]] == ["gradient_flow"]
    assert "FAIL gradient_flow: blocked gradient: " in capsys.readouterr().out


def test_every_dataset_kind_s_model_family_has_a_calling_contract():
    assert {kind.model_family for kind in KINDS.values()} == set(CONTRACTS)
