"""Language-model training throughput on WikiText-2: tokens per second, step time, peak memory, MFU.

The reference setup of PyTorch's word_language_model example: an LSTM of 2 layers x 200
units on 200-wide embeddings, bptt 35, batch 20, with the vocabulary of the corpus's
training file; beside it a GPT of width 200, 2 layers, 2 heads (d_ff 800). On CUDA (or
with `--large yes`) a third, GPU-sized model: a GPT of width 768, 12 layers, 12 heads
(d_ff 3072, GPT-2 small's shape), segments of 1,024 tokens, batch 32. A step is forward,
backward and a plain SGD update through the project's own workload
(`LanguageModelWorkload`: contiguous segments, the LSTM state carried), over the first
segments of the training split.

    python benchmarks/lm_throughput.py [--threads 2] [--steps 60] [--glibc-default]
                                       [--dropout 0.2] [--clip 0.25] [--compile default]
                                       [--corpus ../shared/data/wikitext-2-mini]
                                       [--precision fp32 [bf16 ...]] [--peak-tflops T]
                                       [--large auto|yes|no] [--profile]
                                       [--head-products auto|onednn|mm]

Prints one line per model and precision. Peak memory is the process's peak resident
memory on CPU (it only grows, so the second model's figure includes the first's), or
the peak allocated GPU memory of that model's own run on CUDA.

`--compile MODE` trains each model's forward through torch.compile (`train.compile`'s
modes, train/compiling.py); its warm-up steps then include the compiling, which is not
timed. `--dropout P --clip C` make the step word_language_model's (its defaults: dropout 0.2 on
the embeddings, between the LSTM layers and on its output, as ours places it; gradients
clipped to norm 0.25 before the SGD update), for a comparison at an equal step; by
default the models keep their configured dropout and nothing is clipped.

Precision: `fp32` runs float32 matrix products in full float32 (TF32 off), `tf32` lets
CUDA's matrix units take them in TF32, `bf16` runs the forward pass under bfloat16
autocast (the loss in float32, as the workload computes it).

Model FLOPs utilisation (MFU; Chowdhery et al. 2022, PaLM, appendix B) is the model
FLOPs per second divided by the device's peak. Model FLOPs per trained token are
6 N + 12 L d T: N is the parameters that take part in matrix products (every
parameter except the embedding tables, which are looked up, not multiplied), 6 N the
forward (2 N) and backward (4 N) products; 12 L d T the attention scores and their use
on the values, forward and backward, for L layers of width d over T positions, counted
over the full T x T matrix as PaLM does, although a causal kernel computes about half of
it. The LSTM has no attention term. The peak is the device's published dense (no
sparsity) figure for the precision (`PEAK_TFLOPS`, from NVIDIA's datasheets), or
`--peak-tflops`; on a device missing from the table, and on the CPU, MFU is n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from torch import nn

from tdiag import devices
from tdiag.config import LanguageModelTaskConfig, ModelConfig, TrainConfig
from tdiag.config.schema import CompileMode
from tdiag.data.language_model import prepare
from tdiag.devices import peak_memory_bytes
from tdiag.models import build_model, vocabulary_head
from tdiag.paths import prepared_dir
from tdiag.train.language_model_workload import LanguageModelWorkload
from tdiag.train.compiling import compiled
from tdiag.train.optim import build_optimizer

PRECISIONS = ("fp32", "tf32", "bf16")

# Dense (no sparsity) peak TFLOP/s per precision, NVIDIA's datasheets (H100 and H200
# Tensor Core GPU, A100 Tensor Core GPU): the tensor-core figures with sparsity halved;
# fp32 is the non-tensor-core rate. Matched as a substring of the CUDA device name, most
# specific first: the SXM parts are named plainly ("NVIDIA H100 80GB HBM3", "NVIDIA H200").
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200": {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0},
    "H100 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.5, "tf32": 494.5, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


@dataclass(frozen=True)
class Setup:
    """One benchmarked model and the shape of its training batches."""

    model: ModelConfig
    batch_size: int = 20
    bptt: int = 35


REFERENCE = {
    "LSTM 2x200 (fused)": Setup(ModelConfig(arch="lstm", d_model=200, n_layers=2, lstm_impl="fused")),
    "GPT d200, 2 layers, 2 heads": Setup(ModelConfig(
        arch="gpt", d_model=200, n_layers=2, n_heads=2, d_ff=800, max_len=64, attention="sdpa"
    )),
}


def large_setup(n_layers: int, batch_size: int, seq_len: int) -> tuple[str, Setup]:
    """The GPU-sized GPT: GPT-2 small's width and heads (Radford et al. 2019), no dropout."""
    cfg = ModelConfig(arch="gpt", d_model=768, n_layers=n_layers, n_heads=12, d_ff=3072, max_len=seq_len,
                      attention="sdpa", dropout=0.0)
    name = f"GPT d768, {n_layers} layer{'s' if n_layers > 1 else ''}, 12 heads, T {seq_len}"
    return name, Setup(cfg, batch_size, seq_len)


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """The peak to divide by, and where it comes from (for the printed line)."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no published peak for a CPU"
    name = torch.cuda.get_device_name(device)
    peak = published_peak(name, precision)
    return peak, f"{name}, dense {precision} datasheet peak" if peak else f"{name} is not in PEAK_TFLOPS"


def published_peak(device_name: str, precision: str) -> float | None:
    """The first `PEAK_TFLOPS` entry whose key the CUDA device name contains, or None."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks[precision]
    return None


def matmul_parameters(model: nn.Module) -> int:
    """N of 6 N: parameters that are multiplied, i.e. all but embedding tables (a tied
    output layer shares its table's tensor, which then counts once, as the output's)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    tables = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, nn.Embedding) and id(m.weight) not in linear)
    return sum(p.numel() for p in model.parameters()) - tables


def step_flops(cfg: ModelConfig, n_matmul: int, batch: int, length: int) -> float:
    """Model FLOPs of one training step on `batch` segments of `length` tokens (PaLM's 6 N + 12 L d T per token)."""
    tokens = batch * length
    attention = 12 * cfg.n_layers * cfg.d_model * length if cfg.arch == "gpt" else 0
    return float(tokens * (6 * n_matmul + attention))


def precision_context(device: torch.device, precision: str):
    """bf16: autocast to bfloat16; fp32 / tf32: the float32 matmul precision, no autocast."""
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=devices.autocast_dtype("bf16"))
    return contextlib.nullcontext()


def measure(name: str, setup: Setup, folder: Path, meta: dict, steps: int, warmup: int, device,
            precision: str = "fp32", profile: bool = False, clip: float | None = None,
            compile_mode: str = "off") -> dict:
    train = TrainConfig(optimizer="sgd", lr=0.1, schedule="constant", warmup_steps=0, epochs=1, max_steps=None,
                        bptt=setup.bptt, batch_size=setup.batch_size, clip_grad_norm=None)
    workload = LanguageModelWorkload(folder, meta, train, device)
    torch.manual_seed(0)
    model = build_model(setup.model, *workload.vocab_sizes).to(device)
    optimizer = build_optimizer(model.parameters(), train)  # the project's: torch's fused SGD
    n_matmul = matmul_parameters(model)
    model.train()
    forward = compiled(model, compile_mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> tuple[int, float]:
        batch = workload.train_batch(i, seed=0)
        inputs = batch.micro[0][0]  # (B, L)
        with precision_context(device, precision):
            loss = workload.loss(forward, batch.micro[0], batch.n_tokens, 0.0)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch.n_tokens, step_flops(setup.model, n_matmul, inputs.size(0), inputs.size(1))

    times, tokens, flops = [], 0, 0.0
    for i in range(1, warmup + steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        n_tokens, n_flops = step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > warmup:
            times.append(time.perf_counter() - began)
            tokens += n_tokens
            flops += n_flops
    if profile:
        print_profile(name, precision, device, lambda: step(warmup + steps + 1))
    return {
        "model": name,
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": tokens / sum(times),
        "median_step_ms": 1000 * statistics.median(times),
        "peak_mib": peak_memory_bytes(device) / 2**20,
        "tflops": flops / sum(times) / 1e12,
    }


def print_profile(name: str, precision: str, device: torch.device, step) -> None:
    """The ops that take a step's time (torch.profiler over 3 steps): where MFU is lost."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of {name}, {precision}, 3 steps, by {sort_by}:")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per reference model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's malloc thresholds alone (the training loop raises them; see devices.py)")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/wikitext-2-mini"),
                        help="a folder with wiki.{train,valid,test}.tokens (default: the offline mirror)")
    parser.add_argument("--dropout", type=float, default=None, help="every model's dropout (default: as configured)")
    parser.add_argument("--compile", default="off", choices=get_args(CompileMode),
                        help="train the forward through torch.compile in this mode (default: off)")
    parser.add_argument("--clip", type=float, default=None, help="clip gradients to this global norm (default: no)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="one run of every model per precision (default: fp32)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the peak TFLOP/s MFU divides by, instead of the device's datasheet figure")
    parser.add_argument("--large", choices=("auto", "yes", "no"), default="auto",
                        help="the GPU-sized GPT (auto: on CUDA only)")
    parser.add_argument("--large-layers", type=int, default=12)
    parser.add_argument("--large-batch", type=int, default=32)
    parser.add_argument("--large-seq", type=int, default=1024)
    parser.add_argument("--large-steps", type=int, default=20, help="timed steps of the GPU-sized GPT")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's op table for the GPU-sized GPT at the last precision")
    parser.add_argument("--head-products", choices=("auto", "onednn", "mm"), default="auto",
                        help="the CPU output layer's slice products (VocabularyHead): on oneDNN, on torch.mm, "
                             "or as this CPU chooses (auto: torch.mm on an Intel CPU, oneDNN elsewhere)")
    args = parser.parse_args()
    if args.head_products != "auto":
        vocabulary_head.ONEDNN_PRODUCTS = args.head_products == "onednn"
    torch.set_num_threads(args.threads)
    if not args.glibc_default:
        devices.retain_freed_host_memory()  # as the training loop does on the CPU
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {name: (setup, args.steps) for name, setup in REFERENCE.items()}
    if args.dropout is not None:
        models = {name: (Setup(setup.model.model_copy(update={"dropout": args.dropout}), setup.batch_size, setup.bptt),
                         steps) for name, (setup, steps) in models.items()}
    large = None
    if args.large == "yes" or (args.large == "auto" and device.type == "cuda"):
        large, setup = large_setup(args.large_layers, args.large_batch, args.large_seq)
        models[large] = (setup, args.large_steps)
    with tempfile.TemporaryDirectory() as tmp:
        meta = prepare("bench", LanguageModelTaskConfig(path=str(args.corpus.resolve())), Path(tmp))
        folder = Path(tmp) / prepared_dir("bench")
        gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
        print(f"device {device}{gpu}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"vocabulary {meta['vocab_size']:,}, reference batch 20 x bptt 35 = 700 tokens per step, "
              f"dropout {'as configured' if args.dropout is None else args.dropout}, clip {args.clip}, "
              f"compile {args.compile}, output-layer products on "
              f"{'oneDNN' if vocabulary_head.ONEDNN_PRODUCTS else 'torch.mm'}")
        failed = False
        for precision in args.precision:
            peak, source = peak_tflops(device, precision, args.peak_tflops)
            print(f"{precision}: MFU against {f'{peak:g} TFLOP/s' if peak else 'n/a'} ({source})")
            for name, (setup, steps) in models.items():
                profile = args.profile and precision == args.precision[-1] and name == large
                try:
                    r = measure(name, setup, folder, meta, steps, args.warmup, device, precision, profile, args.clip,
                                args.compile)
                except Exception:  # one model's failure (e.g. out of memory) must not hide the others' figures
                    traceback.print_exc()
                    print(f"{name:<28} [{precision}] FAILED: see the traceback above")
                    failed = True
                    continue
                mfu = f"{100 * r['tflops'] / peak:5.1f}%" if peak else "n/a"
                print(f"{r['model']:<28} {r['parameters']:>10,} params  {r['tokens_per_s']:>8,.0f} tokens/s  "
                      f"median step {r['median_step_ms']:6.1f} ms  peak memory {r['peak_mib']:7.1f} MiB  "
                      f"[{precision}] {r['tflops']:.3g} TFLOP/s  MFU {mfu}  "
                      f"batch {setup.batch_size} x {setup.bptt}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
