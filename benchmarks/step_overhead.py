"""What the training loop's measures cost per step: the loop's `train_step` against the
bare model step, and with each of its measures left out.

Every run records loss, lr, the global and per-block gradient norms, the final
LayerNorm's norms, activation norms (forward hooks), the bytes saved for backward
(saved-tensor hooks) and the seed's peak memory. This times, on the copy task's
encoder-decoder (d_model 64, 2 + 2 layers, 2 heads, d_ff 256, batch 100, Adam) and the lm
study's 2-layer GPT (width 200, bptt 35, batch 20, Adam), interleaved step by step:

- `model step`: forward, loss, backward, gradient clipping at 1.0, optimizer step;
- `train_step`: the loop's step (train/loop.py) with every measure;
- `train_step - activation norms`: its forward hooks left out;
- `train_step - saved bytes`: the memory meter's saved-tensor hooks left out.

    python benchmarks/step_overhead.py [--threads 1] [--steps 200] [--models copy gpt]

Prints the median ms per step of each, and each one's difference from the bare step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from tdiag import devices
from tdiag.config import ModelConfig, SymbolTaskConfig, TrainConfig
from tdiag.data.batching import batch_indices, pad
from tdiag.data.synthetic import generate
from tdiag.models import build_model
from tdiag.train.loop import Watch, train_step
from tdiag.train.optim import build_optimizer
from tdiag.train.workload import StepBatch

PAD = 0
MODELS = {
    "copy": ModelConfig(d_model=64, n_heads=2, d_ff=256, n_encoder_layers=2, n_decoder_layers=2),
    "gpt": ModelConfig(arch="gpt", d_model=200, n_layers=2, n_heads=2, d_ff=800, max_len=64, dropout=0.0),
}
LM_VOCAB, BPTT, LM_BATCH = 13_777, 35, 20  # the lm study's WikiText-2 re-split vocabulary


class CopyBatches:
    """The copy task as the loop's workload hands it to `train_step` (nothing else is read)."""

    def __init__(self):
        splits, _, _ = generate(SymbolTaskConfig(task="copy", n_train=5000, n_valid=1, n_test=1, seed=1))
        self.src = pad([ex["src"] for ex in splits["train"]])

    def train_batch(self, step: int, seed: int) -> StepBatch:
        batch = self.src[batch_indices(len(self.src), 100, seed, step - 1)]
        n_tokens = int((batch[:, 1:] != PAD).sum())
        return StepBatch([(batch, batch)], n_tokens, {"tokens": n_tokens}, whole=(batch, batch))

    def loss(self, model, micro, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        src, tgt = micro
        logits = model(src, tgt[:, :-1])
        return F.cross_entropy(logits.float().transpose(1, 2), tgt[:, 1:], ignore_index=PAD,
                               reduction="sum") / n_tokens


class TokenBatches:
    """Language-model segments of random tokens (the step's cost does not depend on the text)."""

    def __init__(self):
        self.tokens = torch.randint(0, LM_VOCAB, (LM_BATCH, 64 * (BPTT + 1)), generator=torch.Generator().manual_seed(0))

    def train_batch(self, step: int, seed: int) -> StepBatch:
        at = (step % 64) * BPTT
        inputs, targets = self.tokens[:, at : at + BPTT], self.tokens[:, at + 1 : at + BPTT + 1]
        return StepBatch([(inputs, targets)], inputs.numel(), {"tokens": inputs.numel()}, whole=(inputs, targets))

    def loss(self, model, micro, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        inputs, targets = micro
        return F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten(), reduction="sum") / n_tokens


class NoActivationNorms:
    def recording(self):
        return contextlib.nullcontext()

    def pop(self) -> dict:
        return {}

    def remove(self) -> None:
        pass


def no_saved_bytes(watch: Watch) -> Watch:
    watch.memory.micro_batch = lambda micro: contextlib.nullcontext()
    return watch


VARIANTS = {
    "train_step": lambda watch: watch,
    "train_step - activation norms": lambda watch: setattr(watch, "activations", NoActivationNorms()) or watch,
    "train_step - saved bytes": no_saved_bytes,
}


def setup(name: str):
    torch.manual_seed(0)
    cfg = MODELS[name]
    if name == "copy":
        model, workload = build_model(cfg, 20, 20, PAD), CopyBatches()
    else:
        model, workload = build_model(cfg, LM_VOCAB, LM_VOCAB), TokenBatches()
    tc = TrainConfig(optimizer="adam", lr=1e-4, schedule="constant", warmup_steps=0, max_steps=10**6,
                     clip_grad_norm=1.0)
    return model.train(), build_optimizer(model.parameters(), tc), workload, tc


def bare_step(model, optimizer, workload, tc, step: int) -> None:
    batch = workload.train_batch(step, 0)
    workload.loss(model, batch.micro[0], batch.n_tokens, 0.0).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices.retain_freed_host_memory()  # as the training loop does on the CPU, for every model here
    device = torch.device("cpu")
    print(f"threads {args.threads}, steps {args.steps}, torch {torch.__version__}")
    for name in args.models:
        runs = {"model step": setup(name)}
        watches = {}
        for variant, strip in VARIANTS.items():
            runs[variant] = setup(name)
            model, optimizer, _, _ = runs[variant]
            watches[variant] = strip(Watch(model, optimizer, device))
        times: dict[str, list[float]] = {v: [] for v in runs}
        for step in range(1, args.steps + 1):  # interleaved: a slow stretch of the machine hits all alike
            for variant, (model, optimizer, workload, tc) in runs.items():
                began = time.perf_counter()
                if variant == "model step":
                    bare_step(model, optimizer, workload, tc, step)
                else:
                    train_step(model, optimizer, None, workload, tc, step, device, watches[variant])
                if step > 5:
                    times[variant].append(time.perf_counter() - began)
        base = statistics.median(times["model step"])
        for variant, measured in times.items():
            ms = 1000 * statistics.median(measured)
            print(f"{name:5s} {variant:30s} {ms:7.2f} ms/step  {100 * (ms / 1000 / base - 1):+6.1f}% vs model step")


if __name__ == "__main__":
    main()
