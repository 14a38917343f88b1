"""The seq2seq workload: batches, loss and held-out evaluation of an encoder-decoder.

The training loop (train/loop.py) is workload-agnostic: it asks a workload for the
micro-batches of a step, the summed loss of one micro-batch, and evaluation metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tdiag import paths
from tdiag.config import TrainConfig
from tdiag.data.batching import PairedData, batch_indices, load_pairs
from tdiag.train.metrics import bleu, exact_match, token_counts


@dataclass
class StepBatch:
    micro: list  # the micro-batches of one optimizer step
    n_tokens: int  # tokens the loss is averaged over (across all micro-batches)
    stats: dict  # extra per-step record fields


class Seq2SeqWorkload:
    """An encoder-decoder on `{split}.jsonl` token-id pairs described by `meta.json`."""

    log_keys = ("loss", "token_accuracy", "exact_match", "bleu")
    best = ("exact_match", "max")

    def __init__(self, folder: Path, meta: dict, train: TrainConfig, device):
        self.meta = meta
        self.pad_id, self.go_id, self.stop_id = meta["pad_id"], meta["go_id"], meta["stop_id"]
        self.splits = {s: load_pairs(folder / f"{s}.jsonl", self.pad_id) for s in paths.SPLITS}
        self.batch_size, self.micro_batches, self.device = train.batch_size, train.micro_batches, device
        self.tgt_tokens = meta["tgt_tokens"]
        self.steps_per_epoch = max(len(self.splits["train"]) // self.batch_size, 1)

    @property
    def vocab_sizes(self) -> tuple[int, int]:
        return self.meta["src_vocab_size"], self.meta["tgt_vocab_size"]

    # A seq2seq batch depends on (seed, step) alone: there is no state to carry or save.
    def reset(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_batch(self, step: int, seed: int) -> StepBatch:
        """Batch of optimizer step `step` (1-based), a pure function of (seed, step)."""
        train = self.splits["train"]
        indices = batch_indices(len(train), self.batch_size, seed, step - 1)
        micro = [train.batch(chunk, self.pad_id) for chunk in indices.chunk(self.micro_batches)]
        n_tokens = sum(int((tgt[:, 1:] != self.pad_id).sum()) for _, tgt in micro)
        n_src = sum(int((src != self.pad_id).sum()) for src, _ in micro)
        return StepBatch(micro, n_tokens, {"tokens": n_tokens, "src_tokens": n_src})

    def loss(self, model, micro, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        """Summed token loss of one micro-batch divided by the step's token count, so
        accumulating micro-batches gives the gradient of one big batch."""
        src, tgt = (t.to(self.device, non_blocking=True) for t in micro)
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(
            logits.float().transpose(1, 2), tgt[:, 1:], ignore_index=self.pad_id,
            label_smoothing=label_smoothing, reduction="sum",
        )
        return loss / n_tokens

    def _text(self, ids: torch.Tensor) -> str:
        """Content tokens between <go> and <stop>, space-separated (BLEU's tokens)."""
        words = []
        for i in ids.tolist()[1:]:
            if i in (self.stop_id, self.pad_id):
                break
            words.append(self.tgt_tokens[i])
        return " ".join(words)

    @torch.no_grad()
    def evaluate(self, model, split: str, decode_limit: int | None = None, batch_size: int = 500) -> dict:
        """Teacher-forced loss, token accuracy and sequence accuracy over the whole
        split; greedy-decoding exact match and BLEU over its first `decode_limit`."""
        data: PairedData = self.splits[split]
        was_training = model.training
        model.eval()
        loss_sum, correct, total, tf_matches, matches = 0.0, 0, 0, 0, 0
        hypotheses, references = [], []
        limit = len(data) if decode_limit is None else min(decode_limit, len(data))
        for start in range(0, len(data), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            src, tgt = (t.to(self.device) for t in data.batch(idx, self.pad_id))
            logits = model(src, tgt[:, :-1])
            labels = tgt[:, 1:]
            loss_sum += float(F.cross_entropy(
                logits.float().transpose(1, 2), labels, ignore_index=self.pad_id, reduction="sum"
            ))
            c, n = token_counts(logits, labels, self.pad_id)
            correct, total = correct + c, total + n
            right = (logits.argmax(-1) == labels) | (labels == self.pad_id)
            tf_matches += int(right.all(dim=1).sum())
            n_decode = max(0, min(limit - start, len(idx)))
            if n_decode:
                # One position beyond the target, so a prediction that runs on is caught.
                length = min(tgt.shape[1] + 1, model.max_len)
                predicted = model.greedy_decode(src[:n_decode], length, self.go_id, self.stop_id)
                matches += int(exact_match(predicted, tgt[:n_decode], self.pad_id).sum())
                hypotheses += [self._text(row) for row in predicted]
                references += [self._text(row) for row in tgt[:n_decode]]
        model.train(was_training)
        loss = loss_sum / max(total, 1)
        score, signature = bleu(hypotheses, references)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": correct / max(total, 1),
            "teacher_forced_exact_match": tf_matches / len(data),
            "exact_match": matches / max(limit, 1),
            "bleu": score,
            "bleu_signature": signature,
            "examples": len(data),
            "decoded_examples": limit,
        }

    def samples(self, model, split: str = "test", n: int = 5) -> list[dict]:
        """A few greedy decodes beside their sources and references, for the report."""
        data = self.splits[split]
        idx = torch.arange(min(n, len(data)))
        src, tgt = (t.to(self.device) for t in data.batch(idx, self.pad_id))
        predicted = model.greedy_decode(src, min(tgt.shape[1] + 1, model.max_len), self.go_id, self.stop_id)
        source_tokens = self.meta["src_tokens"]
        out = []
        for s, t, p in zip(src, tgt, predicted):
            source = " ".join(source_tokens[i] for i in s.tolist()[1:] if i not in (self.pad_id, self.stop_id))
            out.append({"source": source, "reference": self._text(t), "hypothesis": self._text(p)})
        return out
