"""The LM output layer on the CPU: MKL's and oneDNN's speed on its products, and what `VocabularyHead` buys.

Times, interleaved in one process (median of --rounds), for N = 700 tokens (batch 20 x
bptt 35), d = 200 and V = 13,777 (WikiText-2's training vocabulary):

- a square 2,048 product, the machine's reference rate, by torch.mm (MKL) and by oneDNN;
- the logits as `F.linear` computes them, (N, d) x (d, V), and the same product as
  `VocabularyHead` computes it, transposed in slices of `slice_rows()` vocabulary rows,
  with oneDNN and with torch.mm (`vocabulary_head.ONEDNN_PRODUCTS` says which this CPU
  runs: torch.mm on an Intel CPU, oneDNN elsewhere);
- the two backward products, dW = G^T x and dx = G W;
- the whole layer with its loss, forward and backward: logits then `F.cross_entropy`,
  against `VocabularyHead.summed_cross_entropy`, its products on oneDNN and on torch.mm.

    python benchmarks/output_layer_products.py [--threads 2] [--rounds 9] [--vocab 13777] [--rows-per-thread 512]
                                               [--tokens 700] [--width 200]

`--tokens 350 --width 64 --threads 1` is the smoke pipeline's LMs (batch 10 x bptt 35, or
an evaluation segment of 10 x 35), one thread per Snakemake job.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tdiag import devices
from tdiag.models import vocabulary_head
from tdiag.models.vocabulary_head import VocabularyHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--vocab", type=int, default=13_777)
    parser.add_argument("--rows-per-thread", type=int, default=vocabulary_head.ROWS_PER_THREAD,
                        help="VocabularyHead's slice size per torch thread")
    parser.add_argument("--tokens", type=int, default=700, help="N, tokens per step (batch x bptt)")
    parser.add_argument("--width", type=int, default=200, help="d, the layer's input width")
    args = parser.parse_args()
    tokens, width = args.tokens, args.width
    vocabulary_head.ROWS_PER_THREAD = args.rows_per_thread
    devices.retain_freed_host_memory()  # as every CPU training run
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = args.vocab
    head = VocabularyHead(width, vocab)
    x, targets = torch.randn(tokens, width), torch.randint(0, vocab, (tokens,))
    grad_logits = torch.randn(tokens, vocab)
    square = torch.randn(2048, 2048)
    weight, bias = head.weight.detach(), head.bias.detach()

    def on(onednn: bool, run):
        """`run` with VocabularyHead's slice products on oneDNN or on torch.mm, whatever
        this CPU's default (`vocabulary_head.ONEDNN_PRODUCTS`)."""
        def wrapped() -> None:
            default = vocabulary_head.ONEDNN_PRODUCTS
            vocabulary_head.ONEDNN_PRODUCTS = onednn
            try:
                run()
            finally:
                vocabulary_head.ONEDNN_PRODUCTS = default
        return wrapped

    def sliced_logits() -> None:  # VocabularyHead's products alone, without the exponentials
        for rows in vocabulary_head._slices(vocab):
            vocabulary_head._logits(rows, x, weight, bias)

    def layer_and_loss(scored_by_the_head: bool):
        def run() -> None:
            inputs = x.detach().requires_grad_()
            if scored_by_the_head:
                loss = head.summed_cross_entropy(inputs, targets)
            else:
                loss = F.cross_entropy(head(inputs), targets, reduction="sum")
            loss.backward()
            head.zero_grad(set_to_none=True)
        return run

    product = 2 * tokens * width * vocab
    cases = {
        "square 2048 x 2048 x 2048, torch.mm": (lambda: square @ square, 2 * 2048 ** 3),
        "square 2048 x 2048 x 2048, oneDNN": (on(True, lambda: vocabulary_head._times_transposed(square, square)),
                                              2 * 2048 ** 3),
        "logits, F.linear (N, d) x (d, V)": (lambda: F.linear(x, weight, bias), product),
        f"logits, {vocabulary_head.slice_rows()}-row slices, oneDNN": (on(True, sliced_logits), product),
        f"logits, {vocabulary_head.slice_rows()}-row slices, torch.mm": (on(False, sliced_logits), product),
        "dW = G^T x": (lambda: grad_logits.t() @ x, product),
        "dx = G W": (lambda: grad_logits @ weight, product),
        "layer + loss, logits then F.cross_entropy": (layer_and_loss(False), 3 * product),
        "layer + loss, VocabularyHead, oneDNN": (on(True, layer_and_loss(True)), 3 * product),
        "layer + loss, VocabularyHead, torch.mm": (on(False, layer_and_loss(True)), 3 * product),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, (run, _) in cases.items():  # warm-up
        run()
    for _ in range(args.rounds):
        for name, (run, _) in cases.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    print(f"N {tokens}, d {width}, V {vocab:,}, {args.threads} threads, median of {args.rounds} interleaved rounds:")
    for name, (_, flop) in cases.items():
        seconds = statistics.median(times[name])
        print(f"{name:48s} {seconds * 1000:7.1f} ms  {flop / seconds / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
