"""Whether one training step fits the device, estimated from the configuration alone.

Training a model too large for the device should be a one-line error naming the keys,
not an allocator traceback minutes in, so `check` runs before the model is built. The
estimate is coarse and errs high; it is an estimate, not a measurement (the measured
peak is each step's `peak_memory_bytes`). All sizes are 4-byte elements (fp32
parameters; activations counted at 4 bytes even under bf16/fp16 autocast, which keeps
some tensors in both precisions).

    bytes = 4 * (P * (2 + k) + A)

P, parameters (exact for untied weights, learned positions and pre-norm; an upper
bound otherwise), with d = model.d_model, f = model.d_ff, H = the LSTM's hidden size,
V_s, V_t = the source and target vocabularies, L = model.max_len:

    attention 4d^2 + 4d, feed-forward 2df + f + d, LayerNorm 2d
    encoder_decoder: (V_s + V_t + 2L) d + n_enc (attention + ff + 2 norms)
                     + n_dec (2 attention + ff + 3 norms) + 2 norms + d V_t + V_t
    gpt:             (V_t + L) d + n (attention + ff + 2 norms) + norm + d V_t + V_t
    lstm:            V_t d + 4H(d + H) + 8H + (n - 1)(8H^2 + 8H) + H V_t + V_t

k, optimizer state per parameter: adam/adamw 2 (two moments), momentum 1, sgd 0; the
2 is the weights and their gradients.

A, activations of one micro-batch of N target tokens in sequences of length T:
N = (train.batch_size / train.micro_batches) x T with T = model.max_len (every
sequence fits the position table) for seq2seq, or with train.batch_tokens
N = max(batch_tokens / micro_batches, max_len) padded target tokens and the source
taken as twice that (buckets are cut by target length alone); language models read
T = train.bptt. Per token and layer, with h = model.n_heads:

    encoder or GPT layer: 13d + 3f + 3hT  (norms, q/k/v, attention output, residuals;
                          the feed-forward's two activations and dropout mask; scores,
                          probabilities and mask of the hand-coded attention, which
                          keeps more than SDPA)
    decoder layer:        22d + 3f + 3h(T + T_src)  (a cross-attention besides)
    LSTM layer:           13H  (gate pre- and post-activations, cell, tanh(cell), output, mask)

plus 2d per token for each embedding, 4 V_t per target token for the logits (logits,
their fp32 copy for the loss, its log-softmax, and their gradient; the language models
on the CPU keep one such buffer instead, models/vocabulary_head.py, so there it errs
higher), and one more layer for the gradients flowing back.

For the committed params.yaml the largest run is wmt14's overfit: about 0.4 GiB at
smoke and 1.2 GiB at full (with a 4,200-token BPE vocabulary), and no run exceeds
3.6 GiB even with WikiText-2's 33,278 words as every vocabulary
(tests/test_checkpoint.py holds every run under 24 GiB). It errs high for the toy
tasks: their sequences are about 6 tokens, not max_len.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tdiag.config import ConfigError, ModelConfig, TrainConfig

BYTES_PER_ELEMENT = 4

OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
"""Tensors of optimizer state per parameter tensor (momentum buffer; Adam's two moments)."""


@dataclass(frozen=True)
class Estimate:
    parameters: int
    parameter_bytes: int
    """Weights, gradients and optimizer state."""
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.parameter_bytes + self.activation_bytes


def parameter_count(model: ModelConfig, src_vocab: int, tgt_vocab: int) -> int:
    d, f = model.d_model, model.d_ff
    attention, feed_forward, norm = 4 * d * d + 4 * d, 2 * d * f + f + d, 2 * d
    output = d * tgt_vocab + tgt_vocab
    if model.arch == "encoder_decoder":
        return (
            (src_vocab + tgt_vocab + 2 * model.max_len) * d
            + model.n_encoder_layers * (attention + feed_forward + 2 * norm)
            + model.n_decoder_layers * (2 * attention + feed_forward + 3 * norm)
            + 2 * norm
            + output
        )
    if model.arch == "gpt":
        return (tgt_vocab + model.max_len) * d + model.n_layers * (attention + feed_forward + 2 * norm) + norm + output
    if model.arch == "lstm":
        h = model.hidden_size or d
        first = 4 * h * (d + h) + 8 * h
        return tgt_vocab * d + first + (model.n_layers - 1) * (8 * h * h + 8 * h) + h * tgt_vocab + tgt_vocab
    raise ValueError(f"unknown model.arch {model.arch!r}")


def activation_count(model: ModelConfig, train: TrainConfig, src_vocab: int, tgt_vocab: int) -> int:
    d, f, heads = model.d_model, model.d_ff, model.n_heads
    if model.arch == "lstm":
        length = train.bptt
        tokens = train.batch_size // train.micro_batches * length
        h = model.hidden_size or d
        layer = 13 * h
        return tokens * (2 * d + (model.n_layers + 1) * layer + 4 * tgt_vocab)
    if model.arch == "gpt":
        length = train.bptt
        tokens = train.batch_size // train.micro_batches * length
        layer = 13 * d + 3 * f + 3 * heads * length
        return tokens * (2 * d + (model.n_layers + 1) * layer + 4 * tgt_vocab)
    length = model.max_len
    if train.batch_tokens:
        tokens = max(math.ceil(train.batch_tokens / train.micro_batches), length)
        src_tokens = 2 * tokens
    else:
        tokens = src_tokens = train.batch_size // train.micro_batches * length
    encoder_layer = 13 * d + 3 * f + 3 * heads * length
    decoder_layer = 22 * d + 3 * f + 3 * heads * 2 * length
    return (
        src_tokens * (2 * d + model.n_encoder_layers * encoder_layer)
        + tokens * (2 * d + model.n_decoder_layers * decoder_layer + 4 * tgt_vocab)
        + max(src_tokens * encoder_layer, tokens * decoder_layer)
    )


def estimate(model: ModelConfig, train: TrainConfig, vocab_sizes: tuple[int, int]) -> Estimate:
    parameters = parameter_count(model, *vocab_sizes)
    copies = 2 + OPTIMIZER_STATES[train.optimizer]
    return Estimate(
        parameters=parameters,
        parameter_bytes=BYTES_PER_ELEMENT * copies * parameters,
        activation_bytes=BYTES_PER_ELEMENT * activation_count(model, train, *vocab_sizes),
    )


def available_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, or the host's available physical memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def check(where: str, model: ModelConfig, train: TrainConfig, vocab_sizes: tuple[int, int],
          device: torch.device, available: int | None = None) -> Estimate | None:
    """The estimate, or a ConfigError naming the size keys when it exceeds the device's
    available memory (`available`, default `available_bytes(device)`). `where` is the
    run's key path, e.g. studies.toy.runs.copy. A custom model (arch custom) has no
    estimate, and None is returned: its size is in the user's code, not in the config."""
    if model.arch == "custom":
        return None
    needed = estimate(model, train, vocab_sizes)
    available = available_bytes(device) if available is None else available
    if needed.total > available:
        batch = ("train.batch_tokens", train.batch_tokens) if train.batch_tokens else ("train.batch_size", train.batch_size)
        keys = [("model.d_model", model.d_model)]
        if model.arch != "lstm":
            keys.append(("model.d_ff", model.d_ff))
        keys.append(batch)
        named = ", ".join(f"{key} {value}" for key, value in keys)
        choices = ", ".join(key for key, _ in keys[:-1]) + f" or {batch[0]}"
        raise ConfigError(
            f"{where}: the model and batch need about {human(needed.total)} ({named}) "
            f"but {device.type} has {human(available)} available; lower {choices}"
        )
    return needed
