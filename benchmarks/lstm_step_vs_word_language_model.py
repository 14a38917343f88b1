"""Our LSTM language model's training step against word_language_model's, at the same vocabulary.

`lm_vs_word_language_model.sh` runs the example's own script, whose vocabulary (all three
files) is larger than ours (the training file), so its figures are compared per FLOP. This
one removes that difference: both models are built here with the same vocabulary size
and trained on the same random (batch, bptt) tokens, one step of each in turn, so that
per step equals per FLOP and a busy stretch of the machine hits both. The step is the
example's: 2 x 200 LSTM on 200-wide embeddings, dropout 0.2, the loss averaged over the
tokens, gradients clipped to 0.25, plain SGD (the example's own loop of `p.data.add_`;
ours torch's fused SGD, as `train.optimizer: sgd` builds it). Ours is timed twice: scored
by its output layer as the workload does (`VocabularyHead.summed_cross_entropy`, no
logits on the CPU), and as before that existed (logits, then F.cross_entropy). Then
torch.profiler's op table for 3 steps of each.

    python benchmarks/lstm_step_vs_word_language_model.py EXAMPLES [--vocab 13777] [--threads 2] [--steps 20]

EXAMPLES: a checkout of github.com/pytorch/examples; its word_language_model/model.py is
imported from there, never copied here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tdiag import devices
from tdiag.config import ModelConfig, TrainConfig
from tdiag.models import build_model
from tdiag.train.optim import build_optimizer

BATCH, BPTT, WIDTH, LAYERS, DROPOUT, CLIP, LR = 20, 35, 200, 2, 0.2, 0.25, 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", type=Path)
    parser.add_argument("--vocab", type=int, default=13_777, help="both models' vocabulary (ours on the mirror: 13,777)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each, after 5 untimed")
    args = parser.parse_args()
    sys.path.insert(0, str(args.examples.resolve() / "word_language_model"))
    from model import RNNModel  # the example's, as it is

    devices.retain_freed_host_memory()  # both, as in lm_vs_word_language_model.sh
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab, (BATCH, BPTT + 1))

    def our_step(scored_by_the_head: bool):
        model = build_model(ModelConfig(arch="lstm", d_model=WIDTH, n_layers=LAYERS, lstm_impl="fused",
                                        dropout=DROPOUT), args.vocab, args.vocab).train()
        optimizer = build_optimizer(model.parameters(), TrainConfig(optimizer="sgd", lr=LR, schedule="constant"))

        def step() -> None:
            if scored_by_the_head:  # as the workload scores it
                summed, _ = model(tokens[:, :-1], None, targets=tokens[:, 1:])
                loss = summed / tokens[:, 1:].numel()
            else:
                logits, _ = model(tokens[:, :-1], None)
                loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    example = RNNModel("LSTM", args.vocab, WIDTH, WIDTH, LAYERS, DROPOUT).train()
    criterion = nn.NLLLoss()
    hidden = example.init_hidden(BATCH)

    def example_step() -> None:  # word_language_model/main.py's train() loop body
        nonlocal hidden
        example.zero_grad()
        hidden = tuple(h.detach() for h in hidden)
        output, hidden = example(tokens[:, :-1].t().contiguous(), hidden)
        loss = criterion(output, tokens[:, 1:].t().reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(example.parameters(), CLIP)
        for p in example.parameters():
            p.data.add_(p.grad, alpha=-LR)

    steps = {"ours": our_step(True), "ours, logits + F.cross_entropy": our_step(False),
             "word_language_model": example_step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(5 + args.steps):
        for name, step in steps.items():
            began = time.perf_counter()
            step()
            if i >= 5:
                times[name].append(time.perf_counter() - began)
    print(f"vocabulary {args.vocab:,}, batch {BATCH} x bptt {BPTT}, {args.threads} threads, "
          f"median of {args.steps} interleaved steps:")
    for name, values in times.items():
        print(f"{name:32s} {statistics.median(values) * 1000:7.1f} ms/step")
    for name in steps:
        if name != "word_language_model":
            ratio = statistics.median(times["word_language_model"]) / statistics.median(times[name])
            # Each round's steps ran back to back, so their ratio cancels the machine's drift.
            paired = statistics.median(e / o for e, o in zip(times["word_language_model"], times[name]))
            print(f"{name}: {ratio:.2f}x the example's throughput (per step = per FLOP here); "
                  f"median of the rounds' ratios {paired:.2f}x")
    for name, step in steps.items():
        with torch.profiler.profile() as profile:
            for _ in range(3):
                step()
        print(f"\n{name}, 3 steps, by self CPU time:")
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
