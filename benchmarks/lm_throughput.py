"""Language-model training throughput on WikiText-2: tokens per second, step time, peak memory.

The reference setup of PyTorch's word_language_model example: an LSTM of 2 layers x 200
units on 200-wide embeddings, bptt 35, batch 20, with the vocabulary of the corpus's
training file; beside it a GPT of width 200, 2 layers, 2 heads (d_ff 800). A step is
forward, backward and a plain SGD update through the project's own workload
(`LanguageModelWorkload`: contiguous segments, the LSTM state carried), over the
first segments of the training split.

    python benchmarks/lm_throughput.py [--threads 2] [--steps 60] [--glibc-default]
                                       [--corpus ../shared/data/wikitext-2-mini]

Prints one line per model. Peak memory is the process's peak resident memory on CPU
(it only grows, so the second model's figure includes the first's), or the peak
allocated GPU memory on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tdiag import devices
from tdiag.config import LanguageModelTaskConfig, ModelConfig, TrainConfig
from tdiag.data.language_model import prepare
from tdiag.devices import peak_memory_bytes
from tdiag.models import build_model
from tdiag.paths import prepared_dir
from tdiag.train.language_model_workload import LanguageModelWorkload

MODELS = {
    "LSTM 2x200 (fused)": ModelConfig(arch="lstm", d_model=200, n_layers=2, lstm_impl="fused"),
    "GPT d200, 2 layers, 2 heads": ModelConfig(
        arch="gpt", d_model=200, n_layers=2, n_heads=2, d_ff=800, max_len=64, attention="sdpa"
    ),
}


def measure(name: str, model_cfg: ModelConfig, folder: Path, meta: dict, steps: int, warmup: int, device) -> dict:
    train = TrainConfig(optimizer="sgd", lr=0.1, schedule="constant", warmup_steps=0, epochs=1, max_steps=None,
                        bptt=35, batch_size=20, clip_grad_norm=None)
    workload = LanguageModelWorkload(folder, meta, train, device)
    torch.manual_seed(0)
    model = build_model(model_cfg, *workload.vocab_sizes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr)
    model.train()
    times, tokens = [], 0
    for step in range(1, warmup + steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        batch = workload.train_batch(step, seed=0)
        loss = workload.loss(model, batch.micro[0], batch.n_tokens, 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step > warmup:
            times.append(time.perf_counter() - began)
            tokens += batch.n_tokens
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": tokens / sum(times),
        "median_step_ms": 1000 * statistics.median(times),
        "peak_mib": peak_memory_bytes(device) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's malloc thresholds alone (the workload raises them; see devices.py)")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/wikitext-2-mini"),
                        help="a folder with wiki.{train,valid,test}.tokens (default: the offline mirror)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.glibc_default:
        devices.retain_freed_host_memory = lambda: False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        meta = prepare("bench", LanguageModelTaskConfig(path=str(args.corpus.resolve())), Path(tmp))
        folder = Path(tmp) / prepared_dir("bench")
        print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"vocabulary {meta['vocab_size']:,}, batch 20 x bptt 35 = 700 tokens per step")
        for name, cfg in MODELS.items():
            r = measure(name, cfg, folder, meta, args.steps, args.warmup, device)
            print(f"{r['model']:<28} {r['parameters']:>10,} params  {r['tokens_per_s']:>8,.0f} tokens/s  "
                  f"median step {r['median_step_ms']:6.1f} ms  peak memory {r['peak_mib']:7.1f} MiB")


if __name__ == "__main__":
    main()
