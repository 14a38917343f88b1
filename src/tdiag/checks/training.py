"""Checks that train: gradients reach every parameter, the loss starts where chance puts
it, one batch can be memorised, and the same seed trains the same way twice."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from tdiag.checks.core import CheckResult, Subject, result
from tdiag.config import TrainConfig
from tdiag.models.modes import evaluating
from tdiag.train.optim import build_optimizer

INITIAL_LOSS_TOLERANCE = 1.5
"""Nats the loss at initialisation may sit from ln(vocabulary). Logits of standard
deviation s raise the expected cross-entropy above ln V by about s^2 / 2. A
Xavier-initialised output layer over LayerNorm-ed (unit-variance) features gives
s = sqrt(2 d / (d + V)) < sqrt(2), about 1 nat above ln V when V << d (measured: +0.84
and +1.04 for 32-wide encoder-decoders with V = 13); logits 10 or 100 times too large (a
missing 1/sqrt(d), a mis-initialised output layer) overshoot by tens of nats."""

OVERFIT_ROWS = 2
"""Samples of the batch to memorise: a couple, as in the usual recipe (Karpathy, "A
Recipe for Training Neural Networks", 2019), so that any model that reads its input can."""
OVERFIT_STEPS = 1000
"""Adam steps the model gets to memorise them (it stops once it has), at each rate tried.
Deep LSTMs set it: on the smoke lm study's first batch (64 wide, 2 rows of 35 WikiText-2
tokens, target 1.85) the 1-, 2- and 4-layer LSTMs get there in 122, 199 and 455 steps at
1e-2 (the 4-layer one in 1,037 at 3e-3), where its GPTs and every toy and lab model but
one take 3-94. 400 steps failed the 4-layer LSTM, a correct model, at loss 1.99."""
OVERFIT_LR = 1e-2
"""Adam's learning rate for that, without warmup. Measured: 32-wide encoder-decoders and
GPTs memorise 4 random rows at 1e-2 in 20-60 steps; LSTMs are the slow ones (above)."""
OVERFIT_RETRY_LR = 1e-3
"""Tried when `OVERFIT_LR` does not memorise: a correct model may be unstable at 1e-2
without warmup. Measured: the lab's 6-layer post-LN GPT stays at loss 3.66 (target 1.83)
after 400 steps at 1e-2, the instability the pre/post-LN claim is about, not a bug; at
1e-3 it memorises in 94."""
OVERFIT_FRACTION = 0.5
"""The loss to reach, as a fraction of the unigram entropy of the batch's targets: that
entropy is the lowest loss a model reaches without reading its input (or with its logits
squashed), so falling to half of it needs the input. Real text's repeated tokens make the
entropy small; random tokens make it near ln V."""
OVERFIT_FLOOR = 0.05
"""The threshold never goes below this many nats (a batch of one repeated token has
entropy 0): a loss of 0.05 is a batch predicted at about 95% per token."""

DETERMINISM_STEPS = 5
"""Adam steps (at `OVERFIT_LR`) trained twice from the same seed, in training mode (dropout on)."""
DETERMINISM_TOLERANCE = 0.0
"""Same seed, same process, same machine: the losses must be bit for bit equal."""


def gradient_flow(subject: Subject) -> CheckResult:
    """Every parameter trains and gets a finite, non-zero gradient from the loss on the
    batch (a from-scratch model has no reason to freeze one: `requires_grad=False` on a
    parameter is the bug of a weight that never moves)."""
    model = subject.build()
    subject.loss(model, subject.batch).backward()
    named = list(model.named_parameters())
    bad = []
    for name, p in named:
        if not p.requires_grad:
            bad.append(f"{name} (requires_grad=False: never trained)")
        elif p.grad is None:
            bad.append(f"{name} (no gradient: detached from the loss)")
        elif not bool(torch.isfinite(p.grad).all()):
            bad.append(f"{name} (non-finite gradient)")
        elif not bool(p.grad.any()):
            bad.append(f"{name} (zero gradient)")
    return result(
        "gradient_flow", len(bad), 0, not bad,
        f"blocked gradient: {len(bad)} of {len(named)} parameters, e.g. {'; '.join(bad[:3])}",
        f"all {len(named)} parameters got a finite, non-zero gradient",
    )


@torch.no_grad()
def initial_loss(subject: Subject) -> CheckResult:
    """The loss at initialisation is within `INITIAL_LOSS_TOLERANCE` of ln(vocabulary);
    `measured` is its distance from ln V (positive: above)."""
    model = subject.build()
    with evaluating(model):
        loss = float(subject.loss(model, subject.batch))
    chance = math.log(subject.vocab)
    gap = loss - chance
    return result(
        "initial_loss", gap, INITIAL_LOSS_TOLERANCE, abs(gap) <= INITIAL_LOSS_TOLERANCE,
        f"logit scale at init: loss {loss:.3f} is {gap:+.3f} nats from ln V = {chance:.3f}",
        f"loss at init {loss:.3f}, {gap:+.3f} nats from ln V = {chance:.3f}",
    )


def _train(subject: Subject, steps: int, training_mode: bool, stop_below: float = -math.inf,
           lr: float = OVERFIT_LR) -> list[float]:
    """Losses of up to `steps` Adam steps on the batch, from a fresh model of the
    subject's seed, in float32 (the thresholds of overfit and determinism do not need
    float64: one is far above float32 rounding, the other is bitwise); stops once a loss
    is below `stop_below`."""
    model = subject.build(torch.float32)
    model.train(training_mode)
    # torch's Adam defaults, through the training loop's optimizer factory (fused, no torch._dynamo import)
    optimizer = build_optimizer(model.parameters(), TrainConfig(optimizer="adam", lr=lr, betas=(0.9, 0.999), eps=1e-8))
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = subject.loss(model, subject.batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if losses[-1] < stop_below:
            break
    return losses


def _unigram_entropy(subject: Subject, batch) -> float:
    """Entropy (nats) of the scored targets' frequencies in `batch`."""
    targets = subject.targets(batch)[subject.scored(batch)]
    p = torch.bincount(targets).double() / targets.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def overfit(subject: Subject) -> CheckResult:
    """On its first `OVERFIT_ROWS` samples, the loss falls below `OVERFIT_FRACTION` of the
    targets' unigram entropy within `OVERFIT_STEPS` Adam steps at `OVERFIT_LR`, or else at
    `OVERFIT_RETRY_LR` (dropout off: the question is whether the model can fit, not how it
    regularises); `measured` is the lower of the two final losses."""
    few = replace(subject, batch=subject.rows(slice(0, OVERFIT_ROWS)))
    target = max(OVERFIT_FRACTION * _unigram_entropy(few, few.batch), OVERFIT_FLOOR)
    tried = []
    for lr in (OVERFIT_LR, OVERFIT_RETRY_LR):
        losses = _train(few, OVERFIT_STEPS, training_mode=False, stop_below=target, lr=lr)
        tried.append((losses[-1], lr, losses))
        if losses[-1] < target:
            break
    final, lr, losses = min(tried, key=lambda t: t[0])
    rates = " and ".join(f"{t[1]:g}" for t in tried)
    return result(
        "overfit", final, target, final < target,
        f"cannot memorise {OVERFIT_ROWS} samples: loss still {final:.3g} after {len(losses)} Adam steps at lr "
        f"{rates} (from {losses[0]:.3g}), above {target:.3g} ({OVERFIT_FRACTION} x the loss of ignoring the input)",
        f"loss {losses[0]:.3g} -> {final:.3g} on {OVERFIT_ROWS} samples in {len(losses)} steps at lr {lr:g}",
    )


@torch.no_grad()
def eval_determinism(subject: Subject) -> CheckResult:
    """In eval mode, the same batch twice (the random state moved on between the two)
    gives the same logits, bit for bit: nothing random is left on at inference."""
    model = subject.build()
    with evaluating(model):
        first = subject.logits(model, subject.batch)
        torch.rand(1)  # a different random state for the second pass
        second = subject.logits(model, subject.batch)
    worst = float((first - second).abs().max())
    return result(
        "eval_determinism", worst, DETERMINISM_TOLERANCE, worst <= DETERMINISM_TOLERANCE,
        f"randomness at inference: in eval mode the same batch gave logits {worst:.3g} apart; dropout that "
        "ignores model.eval() (F.dropout without training=self.training) or another random op in forward "
        "(causality, padding and batch independence compare eval passes: not run until this passes)",
        "eval mode: the same batch gave the same logits twice",
    )


def determinism(subject: Subject) -> CheckResult:
    """Two trainings from the same seed give the same losses, step for step."""
    first = _train(subject, DETERMINISM_STEPS, training_mode=True)
    second = _train(subject, DETERMINISM_STEPS, training_mode=True)
    worst = max(abs(a - b) for a, b in zip(first, second))
    step = next((i + 1 for i, (a, b) in enumerate(zip(first, second)) if a != b), 0)
    return result(
        "determinism", worst, DETERMINISM_TOLERANCE, worst <= DETERMINISM_TOLERANCE,
        f"nondeterminism: same seed, losses differ by {worst:.3g} (first at step {step}); "
        "an unseeded random source or a nondeterministic kernel",
        f"same seed twice: {DETERMINISM_STEPS} identical losses",
    )
