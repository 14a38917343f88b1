"""Copy-task benchmark: ms per optimizer step and steps to exact match 1.0.

Compares our from-scratch encoder-decoder (SDPA and hand-coded attention) with
`torch.nn.Transformer` at the reference setup: d_model 64, 2 + 2 layers, 2 heads,
batch 100, dropout 0, Adam (betas 0.9/0.98, eps 1e-9), Noam schedule with warmup 400,
copy task with 4 content symbols over 17. Every model trains on the same batches
(the pipeline's seeded batch order) and is evaluated by greedy decoding on 500
held-out sequences every `--eval-every` steps (default 10) until it reproduces them all.
The models of a seed train step by step in turn, each for at least `--min-steps` steps,
so a busy stretch of a shared machine slows them alike; ms/step is the median step
(forward, backward, optimizer, scheduler) after 5 warm-up steps.

    python benchmarks/copy_task.py [--threads 2] [--seeds 3] [--d-ff 256] [--max-steps 3000] [--eval-every 10]
                                   [--min-steps 200]
                                   [--models torch.nn.Transformer ours-sdpa ours-sdpa:compiled ...]

A model name ending in `:compiled` trains its forward through `torch.compile` (TorchInductor's
default mode, as `train.compile: default` does; train/compiling.py), evaluates eagerly, and
its first steps' times (the compiling) are left out of its median like everyone's warm-up.
Both sides get the same optimizer (the project's, torch's fused Adam).

Prints one line per (model, seed) and a median summary per model.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tdiag import devices
from tdiag.config import InitConfig, ModelConfig, SymbolTaskConfig, TrainConfig
from tdiag.data.batching import batch_indices, pad
from tdiag.data.synthetic import generate
from tdiag.models import build_model, decoding
from tdiag.train.compiling import compiled
from tdiag.train.metrics import exact_match
from tdiag.train.optim import build_optimizer, build_scheduler

PAD, GO, STOP = 0, 1, 2


class TorchTransformer(nn.Module):
    """`torch.nn.Transformer` with embeddings, learned positions and an output layer,
    the usual way it is wrapped for seq2seq (the reference the issue measured)."""

    def __init__(self, d_model: int, d_ff: int, vocab: int, max_len: int = 64):
        super().__init__()
        self.max_len = max_len
        self.src_embed, self.tgt_embed = nn.Embedding(vocab, d_model), nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.core = nn.Transformer(d_model, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                                   dim_feedforward=d_ff, dropout=0.0, batch_first=True)
        self.generator = nn.Linear(d_model, vocab)

    def _embed(self, table, ids):
        return table(ids) + self.positions(torch.arange(ids.shape[1]))

    def encode(self, src):
        return self.core.encoder(self._embed(self.src_embed, src), src_key_padding_mask=src == PAD)

    def decode(self, memory, src, tgt):
        mask = self.core.generate_square_subsequent_mask(tgt.shape[1])
        out = self.core.decoder(self._embed(self.tgt_embed, tgt), memory, tgt_mask=mask,
                                tgt_is_causal=True, memory_key_padding_mask=src == PAD)
        return self.generator(out)

    def forward(self, src, tgt):
        return self.decode(self.encode(src), src, tgt)

    @torch.no_grad()
    def greedy_decode(self, src, max_len, go_id, stop_id):
        memory = self.encode(src)
        out = torch.full((src.shape[0], 1), go_id, dtype=torch.long)
        done = torch.zeros(src.shape[0], dtype=torch.bool)
        for _ in range(max_len - 1):
            step = self.decode(memory, src, out)[:, -1].argmax(-1).masked_fill(done, PAD)
            out = torch.cat([out, step[:, None]], 1)
            done |= step == stop_id
            if done.all():
                break
        return out


# "+init": the init choices the toy study's ablation grids single out (W_Q/W_K tied at
# init, W_O zeroed, token embedding std 1); without it, the package defaults.
INIT_CHOICES = InitConfig(tie="qk", zero_wo=True, embedding_std="one")


WARMUP_STEPS = 5
"""Untimed first steps (allocations; with `:compiled`, the compiling)."""


def build(name: str, d_ff: int, vocab: int) -> nn.Module:
    name = name.removesuffix(":compiled")
    if name == "torch.nn.Transformer":
        return TorchTransformer(64, d_ff, vocab)
    attention = "sdpa" if "sdpa" in name else "manual"
    init = INIT_CHOICES if name.endswith("+init") else InitConfig()
    cfg = ModelConfig(d_model=64, n_heads=2, d_ff=d_ff, attention=attention, init=init)
    return build_model(cfg, vocab, vocab, PAD)


def greedy(model: nn.Module, src: torch.Tensor, max_len: int) -> torch.Tensor:
    """Greedy decodes in one format for every model: ours by the package's incremental
    decoder, `torch.nn.Transformer` by recomputing the prefix (its wrapper has no cache)."""
    if isinstance(model, TorchTransformer):
        return model.greedy_decode(src, max_len, GO, STOP)
    return decoding.greedy(model, src, max_len, GO, STOP)


def trainer(name: str, seed: int, args, splits) -> Iterator[dict]:
    """Train model `name`, one optimizer step per `next()`; each yields the record so far.

    It trains at least `--min-steps` steps (so every model is timed over as many) and
    goes on until exact match 1.0 or `--max-steps`."""
    torch.manual_seed(seed)
    train_src = pad([ex["src"] for ex in splits["train"]])
    valid_src = pad([ex["src"] for ex in splits["valid"]])
    model = build(name, args.d_ff, 20)
    tc = TrainConfig(lr=1.0, warmup_steps=400, schedule="noam", max_steps=args.max_steps, clip_grad_norm=None)
    optimizer = build_optimizer(model.parameters(), tc)
    scheduler = build_scheduler(optimizer, tc, 64)
    forward = compiled(model, "default") if name.endswith(":compiled") else model
    record = {"model": name, "seed": seed, "times": [], "steps_to_exact_match_1": None}
    for step in range(1, args.max_steps + 1):
        batch = train_src[batch_indices(len(train_src), 100, seed, step - 1)]
        began = time.perf_counter()
        logits = forward(batch, batch[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], ignore_index=PAD)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if step > WARMUP_STEPS:
            record["times"].append(time.perf_counter() - began)
        if record["steps_to_exact_match_1"] is None and step % args.eval_every == 0:
            model.eval()
            predicted = greedy(model, valid_src, valid_src.shape[1] + 1)
            model.train()
            if bool(exact_match(predicted, valid_src).all()):
                record["steps_to_exact_match_1"] = step
        yield record
        if record["steps_to_exact_match_1"] is not None and step >= args.min_steps:
            return


def run_seed(seed: int, args, splits) -> list[dict]:
    """Every model of `--models` on one seed, step by step in turn, so that a busy
    stretch of this shared machine slows them all alike."""
    running = {name: trainer(name, seed, args, splits) for name in args.models}
    records = {}
    while running:
        for name, steps in list(running.items()):
            try:
                records[name] = next(steps)
            except StopIteration:
                del running[name]
    for record in records.values():
        record["ms_per_step"] = 1000 * statistics.median(record.pop("times"))
        record["tokens_per_s"] = 100 * 5 / (record["ms_per_step"] / 1000)
    return [records[name] for name in args.models]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--d-ff", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=10, help="steps between greedy evaluations")
    parser.add_argument("--min-steps", type=int, default=200, help="steps every model is timed over, at least")
    parser.add_argument(
        "--models", nargs="+", default=["torch.nn.Transformer", "ours-sdpa", "ours-manual", "ours-sdpa+init"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices.retain_freed_host_memory()  # as the training loop does on the CPU, for every model here
    splits, _, _ = generate(SymbolTaskConfig(task="copy", n_train=20000, n_valid=500, n_test=1, seed=1))
    print(f"threads {args.threads}, d_ff {args.d_ff}, torch {torch.__version__}")
    results = []
    for seed in range(args.seeds):
        for r in run_seed(seed, args, splits):
            results.append(r)
            print(f"{r['model']:30s} seed {seed}: {r['ms_per_step']:6.2f} ms/step, {r['tokens_per_s']:8.0f} tokens/s, "
                  f"exact match 1.0 at step {r['steps_to_exact_match_1']}")
    print("median over seeds:")
    for name in args.models:
        mine = [r for r in results if r["model"] == name]
        solved = [r["steps_to_exact_match_1"] for r in mine if r["steps_to_exact_match_1"]]
        steps = statistics.median(solved) if solved else math.nan
        print(f"{name:30s} {statistics.median(r['ms_per_step'] for r in mine):6.2f} ms/step, "
              f"steps to exact match 1.0: {steps} ({len(solved)}/{len(mine)} seeds solved)")


if __name__ == "__main__":
    main()
