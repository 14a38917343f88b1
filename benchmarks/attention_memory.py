"""Peak memory and step time of the two attention backends at long sequences: `sdpa` vs `manual`.

One training step (forward, token cross-entropy, backward; no optimizer) of the
project's GPT (models/gpt.py) on random tokens, built twice from the same seed with
`attention: sdpa` and `attention: manual` (models/attention.py), at GPT-2 small's shape
by default: width 768, 12 heads, 12 layers, batch 8 x 1,024 tokens, vocabulary 8,192.
`manual` keeps the (B, h, T, T) scores, their mask and softmax for the backward pass,
so its activation memory grows with T^2; SDPA's flash and memory-efficient kernels
recompute them and keep O(T).

    python benchmarks/attention_memory.py [--seq-len 1024] [--batch 8] [--layers 12]
                                          [--precision fp32 bf16] [--steps 10] [--warmup 3]

Per backend and precision: the median step time of `--steps` timed steps after
`--warmup` untimed ones (CUDA events around each step on a GPU, the wall clock on the
CPU); the peak memory of a step, `torch.cuda.max_memory_allocated` after resetting it,
and the part of it above what was allocated before the step (weights and their
gradients), i.e. what the step's activations cost; and the largest difference of the
two backends' logits on the same weights and input. On the CPU, memory is the process's
peak RSS, which only grows, so its figures are not per backend: use small sizes there.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from tdiag import devices
from tdiag.config import ModelConfig
from tdiag.devices import peak_memory_bytes
from tdiag.models import build_model

BACKENDS = ("sdpa", "manual")


def autocast(device: torch.device, precision: str):
    """bf16: forward under bfloat16 autocast; fp32: full float32 matrix products (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    if precision == "bf16":
        return torch.autocast(device.type, dtype=devices.autocast_dtype("bf16"))
    return contextlib.nullcontext()


def timed(device: torch.device, fn) -> float:
    """Seconds one call of `fn` takes on the device."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure(cfg: ModelConfig, vocab: int, tokens: torch.Tensor, precision: str, steps: int, warmup: int) -> dict:
    device = tokens.device
    torch.manual_seed(0)
    model = build_model(cfg, vocab, vocab).to(device)
    model.train()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each

    def step() -> None:
        with autocast(device, precision):
            logits = model(inputs)  # (B, T, V)
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()

    for _ in range(warmup):
        step()  # also allocates the gradients, so "before" below includes them
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = 0
    times = [timed(device, step) for _ in range(steps)]
    peak = peak_memory_bytes(device)
    with torch.no_grad(), autocast(device, precision):
        logits = model(inputs).float()
    return {"median_ms": 1000 * statistics.median(times), "peak_mib": peak / 2**20,
            "step_mib": (peak - before) / 2**20 if device.type == "cuda" else None, "logits": logits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per backend and precision")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    memory = "peak allocated" if device.type == "cuda" else "process peak RSS (only grows)"
    print(f"device {device}{gpu}, torch {torch.__version__}; GPT d{args.d_model}, {args.layers} layers, "
          f"{args.heads} heads, batch {args.batch} x {args.seq_len} tokens, vocabulary {args.vocab:,}; "
          f"forward + backward; memory: {memory}")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(args.vocab, (args.batch, args.seq_len + 1), generator=generator).to(device)
    for precision in args.precision:
        results = {}
        for backend in BACKENDS:
            cfg = ModelConfig(arch="gpt", d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                              d_ff=4 * args.d_model, max_len=args.seq_len, dropout=0.0, attention=backend)
            try:
                results[backend] = r = measure(cfg, args.vocab, tokens, precision, args.steps, args.warmup)
            except torch.OutOfMemoryError as err:
                print(f"{backend:<6} [{precision}] out of memory: {str(err).splitlines()[0]}")
                continue
            step = f", step's own {r['step_mib']:8.1f} MiB" if r["step_mib"] is not None else ""
            print(f"{backend:<6} [{precision}] median step {r['median_ms']:8.2f} ms  "
                  f"peak memory {r['peak_mib']:8.1f} MiB{step}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if len(results) == 2:
            sdpa, manual = results["sdpa"], results["manual"]
            diff = (sdpa["logits"] - manual["logits"]).abs().max().item()
            ratio = f", activations x{manual['step_mib'] / sdpa['step_mib']:.2f}" if sdpa["step_mib"] else ""
            print(f"manual / sdpa [{precision}]: time x{manual['median_ms'] / sdpa['median_ms']:.2f}, "
                  f"peak x{manual['peak_mib'] / sdpa['peak_mib']:.2f}{ratio}; max |logits difference| {diff:.2e}")


if __name__ == "__main__":
    main()
