"""Checks of the attention modules a model exposes, against the paper and a reference.

An attention module "exposes" itself by the layout of tdiag's `MultiHeadAttention`
(models/attention.py): an int `n_heads`, an `nn.Linear` output projection `w_o` of d x d
with bias, the query, key and value projections either as `nn.Linear`s `w_q`, `w_k`,
`w_v` of d x d with bias or packed as `w_qkv`, a module whose `weight` (3d x d) and
`bias` (3d) hold W_Q, W_K and W_V in that order (tdiag's own `PackedProjection`, or an
`nn.Linear(d, 3 * d)`), and `forward(x_q, x_kv, key_padding_mask=None, causal=False)`
with `key_padding_mask` True at padding. Models without such modules (an LSTM) skip
these checks.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from tdiag.checks.core import CheckResult, Subject, result

PARITY_TOLERANCE = 1e-9
"""Largest output difference from torch.nn.MultiheadAttention with the same weights, in
float64: the two compute the same sums in different orders (about 1e-15 relative)."""


def _in_projection(m: nn.Module) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """W_Q, W_K, W_V stacked (3d x d) and their biases (3d), from either layout, where
    d is W_O's width; None if `m` has neither, or one of another shape (then it is not
    an attention module these checks can compare with torch's)."""
    if all(isinstance(getattr(m, p, None), nn.Linear) for p in ("w_q", "w_k", "w_v")):
        weight = torch.cat([m.w_q.weight, m.w_k.weight, m.w_v.weight])
        biases = [m.w_q.bias, m.w_k.bias, m.w_v.bias]
        bias = torch.cat(biases) if all(b is not None for b in biases) else None
    else:
        packed = getattr(m, "w_qkv", None)
        weight, bias = getattr(packed, "weight", None), getattr(packed, "bias", None)
    w_o = getattr(m, "w_o", None)
    if not (isinstance(w_o, nn.Linear) and isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)):
        return None
    d = w_o.in_features
    if weight.shape != (3 * d, d) or bias.shape != (3 * d,):
        return None
    return weight, bias


def _exposed(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(getattr(m, "n_heads", None), int) and isinstance(getattr(m, "w_o", None), nn.Linear)
        and _in_projection(m) is not None
    ]


def _count(modules: list) -> str:
    return f"{len(modules)} attention module{'' if len(modules) == 1 else 's'}"


def attention_parameters(subject: Subject) -> Optional[CheckResult]:
    """Each exposed attention module has 4 d (d + 1) parameters: four d x d projections
    with biases (Vaswani et al. 2017, section 3.2.2). `measured` is the largest distance
    of a module's count from the formula."""
    modules = _exposed(subject.build())
    if not modules:
        return None
    worst, where, d_worst = 0, modules[0][0], 0
    for name, m in modules:
        d = m.w_o.in_features
        off = sum(p.numel() for p in m.parameters()) - 4 * d * (d + 1)
        if abs(off) > abs(worst):
            worst, where, d_worst = off, name, d
    return result(
        "attention_parameters", abs(worst), 0, worst == 0,
        f"attention shape: {where} has {worst:+d} parameters against 4d(d+1) = {4 * d_worst * (d_worst + 1)}",
        f"{_count(modules)}, each 4d(d+1) parameters",
    )


def _reference(m: nn.Module) -> nn.MultiheadAttention:
    """torch's MultiheadAttention holding `m`'s weights."""
    d = m.w_o.in_features
    ref = nn.MultiheadAttention(d, m.n_heads, batch_first=True, dtype=torch.float64)
    weight, bias = _in_projection(m)
    with torch.no_grad():
        ref.in_proj_weight.copy_(weight)
        ref.in_proj_bias.copy_(bias)
        ref.out_proj.weight.copy_(m.w_o.weight)
        ref.out_proj.bias.copy_(m.w_o.bias)
    return ref.eval()


@torch.no_grad()
def _parity(m: nn.Module, generator: torch.Generator) -> float:
    """Largest difference from the reference over self-attention with padding, causal
    self-attention, and cross-attention over a padded memory of another length."""
    m = copy.deepcopy(m).to(torch.float64).eval()
    ref = _reference(m)
    d = m.w_o.in_features
    x = torch.randn(2, 5, d, generator=generator, dtype=torch.float64)
    memory = torch.randn(2, 7, d, generator=generator, dtype=torch.float64)
    pad5 = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    pad7 = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)  # True = may not attend (torch's convention)
    cases = [
        (m(x, x, pad5), ref(x, x, x, key_padding_mask=pad5, need_weights=False)[0]),
        (m(x, x, None, causal=True), ref(x, x, x, attn_mask=future, need_weights=False)[0]),
        (m(x, memory, pad7), ref(x, memory, memory, key_padding_mask=pad7, need_weights=False)[0]),
    ]
    return max(float((ours - theirs).abs().max()) for ours, theirs in cases)


def attention_parity(subject: Subject) -> Optional[CheckResult]:
    """Each exposed attention module computes what torch.nn.MultiheadAttention does with
    the same weights (eq. 1 and section 3.2.2), with padding, causally and across."""
    modules = _exposed(subject.build())
    if not modules:
        return None
    generator = torch.Generator().manual_seed(subject.seed)
    diffs = [(_parity(m, generator), name) for name, m in modules]
    worst, where = max(diffs)
    return result(
        "attention_parity", worst, PARITY_TOLERANCE, worst <= PARITY_TOLERANCE,
        f"attention differs from torch.nn.MultiheadAttention by {worst:.3g} in {where} with the same weights",
        f"{_count(modules)} within {worst:.3g} of torch.nn.MultiheadAttention",
    )
