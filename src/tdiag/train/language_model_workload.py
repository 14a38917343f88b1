"""The language-model workload: contiguous bptt segments, truncated BPTT, perplexity.

The training stream is cut into `batch_size` contiguous rows and read in segments of
`bptt` steps in order (data/language_model.py), as in PyTorch's word_language_model example and
Zaremba et al. 2014: optimizer step s trains on segment (s - 1) mod steps_per_epoch.

- LSTM: the hidden state carries from one segment to the next, detached (truncated
  backpropagation through time), and starts from zeros at each epoch. It is the
  workload's state, saved in every checkpoint, so a resumed run continues bit for bit.
- GPT: each segment is an independent context of `bptt` tokens (config validation
  keeps bptt <= model.max_len).

Evaluation reads a whole split as `EVAL_STREAMS` rows, in segments of `bptt`, the
LSTM's state carried across them; the loss is the mean token cross-entropy and the
perplexity its exponential.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from tdiag import paths
from tdiag.config import LanguageModelTaskConfig, TrainConfig
from tdiag.data.language_model import Vocabulary, batchify, n_segments, segment
from tdiag.errors import UserError
from tdiag.models import decoding
from tdiag.models.gpt import GPT
from tdiag.models.lstm import LSTMLanguageModel
from tdiag.models.modes import evaluating
from tdiag.train import distributed
from tdiag.train.workload import StepBatch

EVAL_STREAMS = 10
"""Rows of a held-out split (`eval_batch_size` of PyTorch's word_language_model example)."""


class LanguageModelWorkload:
    """A next-token language model (arch `lstm` or `gpt`) on a dataset folder's id streams (`paths.stream_file`)."""

    log_keys = LanguageModelTaskConfig.EVAL_METRICS
    best = ("perplexity", "min")
    eval_splits = ("valid",)  # the training curve is the per-step loss, averaged per epoch
    pad_id = None  # segments are dense: no id is padding

    def __init__(self, folder: Path, meta: dict, train: TrainConfig, device):
        self.meta, self.device, self.bptt = meta, device, train.bptt
        self.vocab = Vocabulary.load(paths.vocab_file(folder))
        self.streams = {s: torch.load(paths.stream_file(folder, s), weights_only=True) for s in paths.SPLITS}  # (N,) each
        rows = {"train": train.batch_size, "valid": EVAL_STREAMS, "test": EVAL_STREAMS}
        self.data = {}  # (rows, N // rows) each
        for split, stream in self.streams.items():
            try:
                self.data[split] = batchify(stream, rows[split]).to(device)
            except ValueError as err:
                raise UserError(f"dataset '{meta['name']}', {split} split: {err}") from None
        self.micro_batches = train.micro_batches
        self.steps_per_epoch = n_segments(self.data["train"], self.bptt)
        # Every segment but an epoch's last, which is shorter (`segment`).
        self.tokens_per_step = train.batch_size * self.bptt
        self._state = None  # the LSTM's (h, c) after the last training segment

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        return self.meta["vocab_size"], self.meta["vocab_size"]

    def reset(self) -> None:
        self._state = None

    def state_dict(self) -> dict:
        return {"hidden": None if self._state is None else [t.detach().cpu().clone() for t in self._state]}

    def load_state_dict(self, state: dict) -> None:
        hidden = state.get("hidden")
        self._state = None if hidden is None else tuple(t.to(self.device) for t in hidden)

    def train_batch(self, step: int, seed: int) -> StepBatch:
        """Segment (step - 1) mod steps_per_epoch of the training rows; `seed` is not
        used: the order is the stream's own. The first segment of an epoch starts the
        LSTM from a zero state."""
        index = (step - 1) % self.steps_per_epoch
        if index == 0:
            self._state = None
        inputs, targets = segment(self.data["train"], index * self.bptt, self.bptt)  # (B, L) each
        micro = list(zip(inputs.chunk(self.micro_batches), targets.chunk(self.micro_batches)))
        n_tokens = targets.numel()
        return StepBatch(micro, n_tokens, {"tokens": n_tokens}, whole=(inputs, targets))

    def _summed_loss(self, model, inputs: torch.Tensor, targets: torch.Tensor, state, label_smoothing: float = 0.0):
        """The token cross-entropy summed over the segment, and the state to carry (LSTM)
        or None.

        The project's LMs score `targets` in their own forward (`VocabularyHead`: on the
        CPU without building the logits); a user's model returns logits, scored here."""
        unwrapped = distributed.unwrapped(model)
        if isinstance(unwrapped, LSTMLanguageModel):
            return model(inputs, state, targets=targets, label_smoothing=label_smoothing)
        if isinstance(unwrapped, GPT):
            return model(inputs, targets=targets, label_smoothing=label_smoothing), None
        logits = model(inputs)  # (B, L, V)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing, reduction="sum"
        )
        return loss, None

    def loss(self, model, micro, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        """Summed token cross-entropy of one micro-batch divided by the step's token count."""
        inputs, targets = micro
        loss, state = self._summed_loss(model, inputs, targets, self._state, label_smoothing)
        if state is not None:
            self._state = tuple(s.detach() for s in state)  # truncated BPTT
        return loss / n_tokens

    @torch.no_grad()
    def evaluate(self, model, split: str, decode_limit: int | None = None) -> dict:
        """Loss and perplexity over the whole split (`decode_limit` does not apply: an
        LM is scored by teacher forcing alone)."""
        data = self.data[split]
        state, loss_sum, n_tokens = None, torch.zeros((), device=self.device, dtype=torch.float64), 0
        with evaluating(model):
            for start in range(0, data.size(1) - 1, self.bptt):
                inputs, targets = segment(data, start, self.bptt)
                loss, state = self._summed_loss(model, inputs, targets, state)
                loss_sum += loss
                n_tokens += targets.numel()
        loss = float(loss_sum) / n_tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": n_tokens}

    def scores_whole_split(self, split: str, decode_limit: int | None) -> bool:
        return True

    def _prompt_starts(self, ids: list[int], n: int, prompt: int, length: int) -> list[int]:
        """n positions spread over the stream, each moved on to the start of a text line."""
        eos, heading, last = self.vocab.eos_id, self.vocab.index.get("="), len(ids) - prompt - length
        starts = []
        for i in range(n):
            p = max(1, last * i // n)
            while p < last and not (ids[p - 1] == eos and ids[p] not in (eos, heading)):
                p += 1
            starts.append(p)
        return starts

    def _text(self, ids) -> str:
        return " ".join(self.vocab.tokens[i] for i in ids)

    @torch.no_grad()
    def samples(self, model, split: str = "test", n: int = 3, prompt: int = 12, length: int = 20) -> list[dict]:
        """Greedy continuations of `n` prompts of `prompt` tokens from the split, beside
        the text that really follows, for the report."""
        stream = self.streams[split]
        if stream.numel() < prompt + length + 2:
            return []
        out = []
        for start in self._prompt_starts(stream.tolist(), n, prompt, length):
            context = stream[start : start + prompt].to(self.device)
            out.append({
                "prompt": self._text(context.tolist()),
                "continuation": self._text(decoding.continue_greedy(model, context, length)),
                "reference": self._text(stream[start + prompt : start + prompt + length].tolist()),
            })
        return out
