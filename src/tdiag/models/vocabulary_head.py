"""The language models' output layer: next-token logits, or their summed cross-entropy without them.

`VocabularyHead` is `nn.Linear` (the same parameters and state-dict keys; tying its
weight to an embedding works as before) with one more method, `summed_cross_entropy(x,
targets)`: the value of

    F.cross_entropy(head(x).float().flatten(0, -2), targets.flatten(),
                    label_smoothing=eps, reduction="sum")

within float rounding, with the same gradients. On the CPU in float32 or float64, for a
vocabulary of at least `MIN_VOCABULARY` words, it never builds the (tokens, V) logits;
everywhere else (a smaller vocabulary, a GPU, autocast, torch.compile's tracing) it is
exactly that line.

Why: a word-level LM on the CPU spends about three quarters of its step in the output
layer. Two things make the plain line slow there (benchmarks/RESULTS.md, "The LM output
layer on the CPU"):

- MKL runs the (N, d) x (d, V) product of an odd vocabulary (WikiText-2's 13,777 words:
  rows that are not 32-byte aligned) at 40-65% of the speed of its square products on
  an AMD Zen 4, and of a multiple of 8 words at 55-80%; the same product cut into slices
  of vocabulary rows (`slice_rows`), (rows, d) x (d, N) each, runs near its full speed.
  MKL does not use AVX-512 on an AMD CPU and oneDNN does: there the slices' two products
  that oneDNN takes as they are laid out run on it (`ONEDNN_PRODUCTS`): at 200 wide the
  logits 13-15% faster than on MKL and the whole layer 11-12%; at 64 wide no faster. On
  an Intel Xeon with AVX-512 MKL is the faster of the two (`ONEDNN_PRODUCTS`).
- log-softmax and its backward are three passes over the logits, and the logits, the
  log-probabilities and their gradient are three (N, V) tensors.

So the logits are computed transposed, (V, N), one slice at a time, and each slice is
exponentiated while it is in cache: one (rows, N) block of exp(logits) per slice replaces
all three, and the backward is two matrix products per slice (the bias's gradient rides
on the weight's) with no element-wise pass over it.
The exponentials are taken without first subtracting each token's largest logit, which
saves a pass; exp in floating point is exact relative to its own size, so this is as
accurate as long as no sum of exponentials overflows or all but vanishes. When a token's
sum falls outside [`SUM_RANGE`] (a logit above about 87, or all of a token's logits below
about -46), the forward is done again with each token's largest logit subtracted, as
log-softmax does; a NaN anywhere gives a NaN loss, as it does there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from tdiag import devices

ROWS_PER_THREAD = 512
"""Vocabulary rows per slice and torch thread. For the WikiText-2 LSTM's layer (N 700, d
200, V 13,777) with its loss, forward and backward, on this CPU: one thread 144-149 ms
with 512 rows against 155-164 ms with 1,024; two threads 84-85 ms with 1,024 rows against
87-92 ms with 512 (benchmarks/output_layer_products.py, RESULTS.md; measured on MKL's
products; on oneDNN's, separate-process runs put 1,024 ahead at two threads and 512 at
one, within the machine's noise)."""

MIN_VOCABULARY = 4096
"""Below this many vocabulary rows the plain line runs: the layer with its loss, forward and
backward (N 700, d 200), on MKL took the same time both ways at 4,096 words, 8-15% longer
sliced at 1,000 and 3,000, 7-8% less at 6,000 (one and two threads;
output_layer_products.py). With oneDNN's products it is 7-17% less at 4,096 and within 5%
either way at 2,000 and 3,000."""

SUM_RANGE = (1e-20, 1e38)
"""Sums of unshifted exponentials accepted per token; outside it the shifted forward runs."""


def slice_rows() -> int:
    """Vocabulary rows per slice: `ROWS_PER_THREAD` for each of torch's threads, so each
    thread's share of a slice of exponentials stays about the same size in cache."""
    return ROWS_PER_THREAD * torch.get_num_threads()


class VocabularyHead(nn.Linear):
    """`nn.Linear(d, V)` for next-token prediction; see the module's docstring."""

    def summed_cross_entropy(self, x: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """The cross-entropy of `self(x)` against `targets`, summed over tokens.

        x (..., d) and targets (...) of the same leading shape; every target is scored
        (language-model segments have no padding)."""
        x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
        if _chunked(x, self.weight):
            return _ChunkedLinearCrossEntropy.apply(x, self.weight, self.bias, targets, label_smoothing)
        return F.cross_entropy(self(x).float(), targets, label_smoothing=label_smoothing, reduction="sum")


def _chunked(x: Tensor, weight: Tensor) -> bool:
    """Where the chunked computation runs: the CPU, in plain float32 or float64 (autocast
    and torch.compile keep the plain line, whose dtypes and graph they manage), for a
    vocabulary of at least `MIN_VOCABULARY`."""
    return (
        weight.size(0) >= MIN_VOCABULARY
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def _slices(size: int) -> list[slice]:
    rows = slice_rows()
    return [slice(start, min(start + rows, size)) for start in range(0, size, rows)]


_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
"""oneDNN's fully connected layer on plain tensors, y = a b^T (torch registers it where it
is built with oneDNN, for torch.compile's CPU kernels)."""


ONEDNN_PRODUCTS = devices.cpu_vendor() != "GenuineIntel"
"""Whether the slices' float32 products go to oneDNN rather than torch.mm (MKL). MKL runs
its AVX-512 kernels on Intel CPUs only. On an AMD Zen 4 oneDNN took the layer with its
loss (N 700, d 200, two threads) 11-12% less time than MKL; on an Intel Xeon with AVX-512
and AMX (Sapphire Rapids class) MKL took 11-14% less than oneDNN, there and at the smoke
pipeline's shape (N 350, d 64, one thread) (RESULTS.md, "The output layer on an Intel
CPU"). Elsewhere (ARM, an unknown vendor) oneDNN, as before that measurement."""


def _times_transposed(a: Tensor, b: Tensor) -> Tensor:
    """a b^T, (m, n), for row-major a (m, k) and b (n, k).

    In float32 on a CPU where oneDNN is the faster (`ONEDNN_PRODUCTS`), oneDNN's kernel
    where torch has it (RESULTS.md, "oneDNN for the output layer's products"); elsewhere
    (an Intel CPU, float64, a torch without oneDNN, or oneDNN switched off with
    `torch.backends.mkldnn.enabled = False`) torch.mm. The grad_x product, a sum over
    slices of block^T W_rows, stays on torch.mm: oneDNN was no faster on it, and slow
    with its input transposed."""
    if ONEDNN_PRODUCTS and a.dtype == torch.float32 and _ONEDNN_LINEAR is not None \
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled:
        return _ONEDNN_LINEAR(a, b, None, "none", [], "")
    return torch.mm(a, b.t())


def _logits(rows: slice, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The logits of vocabulary rows `rows` for every token, (rows, N)."""
    block = _times_transposed(weight[rows], x)
    return block if bias is None else block.add_(bias[rows, None])


def _exponentials(x: Tensor, weight: Tensor, bias: Tensor | None, shift: Tensor | None) -> tuple[list[Tensor], Tensor]:
    """exp(logits - shift) as (rows, N) blocks, one per slice, and its sum over the
    vocabulary per token (N,)."""
    blocks, sums = [], x.new_zeros(x.size(0))
    for rows in _slices(weight.size(0)):
        block = _logits(rows, x, weight, bias)
        if shift is not None:
            block.sub_(shift)
        sums.add_(block.exp_().sum(0))
        blocks.append(block)
    return blocks, sums


def _largest_logits(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Each token's largest logit (N,), one slice at a time."""
    largest = x.new_full((x.size(0),), -torch.inf)
    for rows in _slices(weight.size(0)):
        largest = torch.maximum(largest, _logits(rows, x, weight, bias).amax(0))  # NaN stays NaN
    return largest


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_n CE(W x_n + b, t_n) with label smoothing eps: per token,
    lse_n - (1 - eps) z_n[t_n] - eps mean_v z_n[v], whose gradient with respect to the
    logits is softmax_n - (1 - eps) onehot(t_n) - eps / V."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, label_smoothing):
        x, weight = x.contiguous(), weight.contiguous()
        exps, sums = _exponentials(x, weight, bias, None)
        shift = None
        low, high = SUM_RANGE
        if not bool(((sums > low) & (sums < high)).all()):
            shift = _largest_logits(x, weight, bias)
            exps, sums = _exponentials(x, weight, bias, shift)
        log_sums = sums.log() if shift is None else sums.log() + shift  # (N,)
        target_logits = (x * weight[targets]).sum(1)
        if bias is not None:
            target_logits = target_logits + bias[targets]
        losses = log_sums - (1.0 - label_smoothing) * target_logits
        if label_smoothing:
            mean_logits = x @ weight.mean(0)
            if bias is not None:
                mean_logits = mean_logits + bias.mean()
            losses = losses - label_smoothing * mean_logits
        ctx.save_for_backward(x, weight, sums, targets, *exps)
        ctx.label_smoothing, ctx.has_bias = label_smoothing, bias is not None
        return losses.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, sums, targets, *exps = ctx.saved_tensors
        eps, n_tokens, vocab, width = ctx.label_smoothing, x.size(0), weight.size(0), x.size(1)
        scale = grad / sums  # (N,): softmax = exps * (1 / sums), times the incoming gradient
        # grad_weight's rows are exps-block x scaled_x; with a bias, scale as one more column
        # of scaled_x gives grad_bias from the same product.
        columns = [(x * scale[:, None]).t()] + ([scale[None]] if ctx.has_bias else [])
        scaled_x_t = torch.cat(columns)  # (d or d + 1, N)
        grad_weight = torch.empty_like(weight)
        grad_bias = weight.new_empty(vocab) if ctx.has_bias else None
        summed = torch.zeros_like(x)  # sum_v exps[v, n] W_v
        start = 0
        for block in exps:  # the forward's slices, whatever the thread count is now
            rows, start = slice(start, start + block.size(0)), start + block.size(0)
            both = _times_transposed(block, scaled_x_t)
            grad_weight[rows] = both[:, :width]
            if grad_bias is not None:
                grad_bias[rows] = both[:, width]
            summed.addmm_(block.t(), weight[rows])
        grad_x = summed.mul_(scale[:, None])
        # The targets' share, -(1 - eps) grad at each (t_n, n), and the smoothing's -eps grad / V everywhere.
        hit = (1.0 - eps) * grad
        grad_x.sub_(hit * weight[targets])
        grad_weight.index_add_(0, targets, x * -hit)
        if grad_bias is not None:
            grad_bias.index_add_(0, targets, (-hit).expand(n_tokens))
        if eps:
            spread = eps * grad / vocab
            grad_x.sub_(spread * weight.sum(0))
            grad_weight.sub_(spread * x.sum(0))
            if grad_bias is not None:
                grad_bias.sub_(spread * n_tokens)
        return grad_x, grad_weight, grad_bias, None, None
