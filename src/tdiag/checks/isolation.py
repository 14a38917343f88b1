"""What must not reach an output: later tokens (causality), padding, other samples.

Each check compares the logits of one float64 forward pass in eval mode (dropout off)
with those of another whose input differs only in what must not matter. A correct model
gives the same numbers up to float64 rounding of reordered sums (about 1e-15 relative);
any real leak, even through one attention weight of 1e-6, moves logits of order one by
far more than `ISOLATION_TOLERANCE`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from tdiag.checks.core import CheckResult, Subject, result
from tdiag.models.modes import evaluating

ISOLATION_TOLERANCE = 1e-9
"""Largest logit change allowed where nothing that matters changed (float64: see above)."""

PAD_EXTRA = 3
"""Padding columns added to the source for the padding checks. Only the source: target
padding is on the right, where causality alone hides it from every real position (the
causality check), so a causal leak fails that check and not these."""


def _replace_after(tokens: Tensor, t: int, vocab: int, pad_id: Optional[int], generator: torch.Generator) -> Tensor:
    """`tokens` with every position after `t` set to a random other token, never the pad."""
    out = tokens.clone()
    later = out[:, t + 1 :]
    shift = torch.randint(1, vocab, later.shape, generator=generator)
    changed = (later + shift) % vocab
    if pad_id is not None:
        changed = torch.where(changed == pad_id, (changed + 1) % vocab, changed)
    out[:, t + 1 :] = changed
    return out


@torch.no_grad()
def causality(subject: Subject) -> CheckResult:
    """Logits at position t do not change when any token after t does, for every t."""
    model = subject.build()
    batch = subject.batch
    tokens = subject.decoder_input(batch)
    generator = torch.Generator().manual_seed(subject.seed)
    worst, where = 0.0, 0
    with evaluating(model):
        reference = subject.logits(model, batch)
        for t in range(tokens.size(1) - 1):
            changed = _replace_after(tokens, t, subject.vocab, subject.pad_id, generator)
            logits = subject.logits(model, subject.with_decoder_input(batch, changed))
            diff = (logits[:, : t + 1] - reference[:, : t + 1]).abs().amax(dim=(0, 2))  # (t + 1,)
            if float(diff.max()) > worst:
                worst, where = float(diff.max()), int(diff.argmax())
    return result(
        "causality", worst, ISOLATION_TOLERANCE, worst <= ISOLATION_TOLERANCE,
        f"causal leak: logits at position {where} changed by {worst:.3g} when only later tokens changed",
        f"logits at position t moved at most {worst:.3g} when tokens after t changed",
    )


def _padded(subject: Subject) -> tuple[Tensor, Tensor]:
    """The batch with `PAD_EXTRA` more padding columns on the source."""
    src, tgt = subject.batch
    return torch.cat([src, src.new_full((src.size(0), PAD_EXTRA), subject.pad_id)], dim=1), tgt


@torch.no_grad()
def padding_invariance(subject: Subject) -> CheckResult:
    """Logits at real target positions do not change when the source gets more padding."""
    model = subject.build()
    scored = subject.scored(subject.batch)
    with evaluating(model):
        plain = subject.logits(model, subject.batch)
        padded = subject.logits(model, _padded(subject))
    worst = float((padded - plain)[scored].abs().max())
    return result(
        "padding_invariance", worst, ISOLATION_TOLERANCE, worst <= ISOLATION_TOLERANCE,
        f"padding leak: logits at real positions changed by {worst:.3g} when {PAD_EXTRA} source pad columns were added",
        f"logits at real positions moved at most {worst:.3g} with {PAD_EXTRA} more source pad columns",
    )


def padding_attention(subject: Subject) -> Optional[CheckResult]:
    """Source pad positions receive no attention, in the encoder or across to the decoder:
    the loss at real target positions has zero gradient with respect to the source
    embeddings at pad positions (nothing at a pad position reaches a real output).

    The source embedding is the `nn.Embedding` the model calls with the source tensor
    itself; None (not applicable) when no such module is called.
    """
    model = subject.build()
    src, tgt = _padded(subject)
    seen: list[Tensor] = []

    def keep(module, inputs, output):
        if inputs[0] is src:
            output.retain_grad()
            seen.append(output)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        with evaluating(model):
            subject.loss(model, (src, tgt)).backward()
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        return None
    pads = src == subject.pad_id  # (B, S)
    worst = max(float(e.grad[pads].abs().max()) if e.grad is not None else 0.0 for e in seen)
    return result(
        "padding_attention", worst, ISOLATION_TOLERANCE, worst <= ISOLATION_TOLERANCE,
        f"padding attended: the loss has gradient {worst:.3g} at source pad embeddings "
        "(a pad mask missing or over the wrong axis, in encoder self-attention or cross-attention)",
        f"gradient of the loss at source pad embeddings at most {worst:.3g}",
    )


@torch.no_grad()
def batch_independence(subject: Subject) -> CheckResult:
    """Each sample's logits are the same in the batch as alone."""
    model = subject.build()
    batch = subject.batch
    scored = subject.scored(batch)
    worst, which = 0.0, 0
    with evaluating(model):
        together = subject.logits(model, batch)
        for i in range(scored.size(0)):
            alone = subject.logits(model, subject.rows([i]))[0]
            diff = float((alone - together[i])[scored[i]].abs().max())
            if diff > worst:
                worst, which = diff, i
    return result(
        "batch_independence", worst, ISOLATION_TOLERANCE, worst <= ISOLATION_TOLERANCE,
        f"batch coupling: sample {which}'s logits changed by {worst:.3g} between the batch and alone "
        "(a reduction or a mask over the batch axis)",
        f"a sample's logits moved at most {worst:.3g} between the batch and alone",
    )

