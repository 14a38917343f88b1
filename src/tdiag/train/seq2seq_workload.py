"""The seq2seq workload: batches, loss and held-out evaluation of an encoder-decoder.

The training loop (train/loop.py) is workload-agnostic: it asks a workload for the
micro-batches of a step, the summed loss of one micro-batch, and evaluation metrics
(the `Workload` protocol, train/workload.py).

Two kinds of data share this workload. Symbol and character tasks (data/synthetic.py)
are scored on their own tokens: exact match, and BLEU with `tokenize="none"`. Text
(`meta["text"]["kind"] == "bpe"`, data/translation.py) is scored as text: a decode is
joined back into words (BPE undone) and Moses-detokenised, then compared with the raw
reference sentence by sacreBLEU (13a) and chrF; the training split is evaluated beside
the validation split, so an overfitting run shows how well it learnt its own pairs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from tdiag import paths
from tdiag.config import SymbolTaskConfig, TrainConfig, TranslationTaskConfig
from tdiag.data import bpe, wmt14
from tdiag.data.batching import PairedData, batch_indices, bucket_indices, load_pairs, token_buckets
from tdiag.models import decoding
from tdiag.models.modes import evaluating
from tdiag.train.metrics import bleu, exact_match, text_scores, token_counts
from tdiag.train.workload import StepBatch

EVAL_TOKENS = 2048
"""Padded target tokens per teacher-forced evaluation batch (bounds its (batch, length,
vocabulary) logits; larger batches measured slower on CPU)."""
DECODE_TOKENS = 8192
"""Padded source tokens per decoding batch (each step holds only (rows, vocabulary) logits)."""


def _lengths(rows: torch.Tensor, pad_id: int) -> list[int]:
    return (rows != pad_id).sum(dim=1).tolist()


class Seq2SeqWorkload:
    """An encoder-decoder on a dataset folder's token-id pairs (`paths.pairs_file`) described by its `meta.json`."""

    def __init__(self, folder: Path, meta: dict, train: TrainConfig, device):
        self.meta = meta
        self.pad_id, self.go_id, self.stop_id = meta["pad_id"], meta["go_id"], meta["stop_id"]
        self.splits = {s: load_pairs(paths.pairs_file(folder, s), self.pad_id) for s in paths.SPLITS}
        self.batch_size, self.micro_batches, self.device = train.batch_size, train.micro_batches, device
        self.beam_size = train.beam_size
        self.tokens_per_step = None  # padding and length buckets vary a step's target tokens
        self.tgt_tokens = meta["tgt_tokens"]
        self.text = meta.get("text") if (meta.get("text") or {}).get("kind") == "bpe" else None
        if self.text:
            self.raw = {s: _raw_text(paths.pairs_file(folder, s)) for s in paths.SPLITS}
            self.log_keys = TranslationTaskConfig.EVAL_METRICS
            self.best = ("bleu", "max")
            self.eval_splits = ("valid", "train")
        else:
            self.log_keys = SymbolTaskConfig.EVAL_METRICS  # every synthetic task's
            self.best = ("exact_match", "max")
            self.eval_splits = ("valid",)
        train_split = self.splits["train"]
        self.buckets = None
        if train.batch_tokens:
            self.buckets = token_buckets(
                _lengths(train_split.tgt, self.pad_id), train.batch_tokens, _lengths(train_split.src, self.pad_id)
            )
            self.steps_per_epoch = len(self.buckets)
        else:
            self.steps_per_epoch = max(len(train_split) // self.batch_size, 1)

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
        """Batch of optimizer step `step` (1-based), a pure function of (seed, step):
        `batch_size` shuffled examples, or with `batch_tokens` one length bucket."""
        train = self.splits["train"]
        if self.buckets is not None:
            indices = bucket_indices(self.buckets, seed, step - 1)
        else:
            indices = batch_indices(len(train), self.batch_size, seed, step - 1)
        # Exactly micro_batches parts (`chunk` may make fewer), so every process of a
        # distributed run has its share of parts even when a bucket is small.
        parts = indices.tensor_split(self.micro_batches)
        micro = [train.batch(part if len(part) else indices[:1], self.pad_id) for part in parts]
        whole = micro[0] if self.micro_batches == 1 else train.batch(indices, self.pad_id)
        n_tokens = int((whole[1][:, 1:] != self.pad_id).sum())
        n_src = int((whole[0] != self.pad_id).sum())
        return StepBatch(micro, n_tokens, {"tokens": n_tokens, "src_tokens": n_src, "sentences": len(indices)},
                         whole=whole, fillers=frozenset(i for i, part in enumerate(parts) if not len(part)))

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

    # ----------------------------------------------------------------- decoding

    def _tokens(self, ids: torch.Tensor) -> list[str]:
        """Content tokens between <go> and <stop>."""
        words = []
        for i in ids.tolist()[1:]:
            if i in (self.stop_id, self.pad_id):
                break
            words.append(self.tgt_tokens[i])
        return words

    def _hypothesis(self, ids: torch.Tensor) -> str:
        """A decode as the text it is scored as: BPE undone and detokenised for text,
        the task's tokens space-separated otherwise."""
        text = " ".join(self._tokens(ids))
        if self.text:
            return wmt14.detokenize(bpe.undo(text), self.text["target_lang"])
        return text

    def _decode(self, model, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Greedy or beam search (train.beam_size) for a batch of sources."""
        if self.text:
            # Real output lengths are not known in advance: allow 1.5 x the source + 10 (every
            # WMT14 en-fr pair of the study fits; French runs ~1.1 x English in subwords).
            length = min(src.shape[1] * 3 // 2 + 10, model.max_len)
        else:
            # One position beyond the target, so a prediction that runs on is caught.
            length = min(tgt.shape[1] + 1, model.max_len)
        if self.beam_size > 1:
            return decoding.beam_search(model, src, length, self.go_id, self.stop_id, self.beam_size)[0]
        return decoding.greedy(model, src, length, self.go_id, self.stop_id)

    def _batches(self, data: PairedData, count: int, by: str, tokens: int) -> list[torch.Tensor]:
        """The first `count` examples in batches of similar `by` ('src' or 'tgt') length."""
        return token_buckets(_lengths(getattr(data, by)[:count], self.pad_id), tokens)

    # --------------------------------------------------------------- evaluation

    def scores_whole_split(self, split: str, decode_limit: int | None) -> bool:
        return decode_limit is None or decode_limit >= len(self.splits[split])

    @torch.no_grad()
    def evaluate(self, model, split: str, decode_limit: int | None = None) -> dict:
        """Metrics of the first `decode_limit` examples of the split (all with None):
        teacher-forced loss, token accuracy and sequence accuracy, and exact match,
        BLEU (and chrF for text) of their decodes."""
        data: PairedData = self.splits[split]
        loss_sum, correct, total, tf_matches, matches = 0.0, 0, 0, 0, 0
        limit = len(data) if decode_limit is None else min(decode_limit, len(data))
        hypotheses = [""] * limit
        with evaluating(model):
            for idx in self._batches(data, limit, "tgt", EVAL_TOKENS):
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
            for idx in self._batches(data, limit, "src", DECODE_TOKENS):
                src, tgt = (t.to(self.device) for t in data.batch(idx, self.pad_id))
                predicted = self._decode(model, src, tgt)
                matches += int(exact_match(predicted, tgt, self.pad_id).sum())
                for i, row in zip(idx.tolist(), predicted):
                    hypotheses[i] = self._hypothesis(row)
        loss = loss_sum / max(total, 1)
        if self.text:
            scores = text_scores(hypotheses, self.raw[split]["tgt"][:limit])
        else:
            references = [" ".join(self._tokens(row)) for row in data.tgt[:limit]]
            score, signature = bleu(hypotheses, references)
            scores = {"bleu": score, "bleu_signature": signature}
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": correct / max(total, 1),
            "teacher_forced_exact_match": tf_matches / limit,
            "exact_match": matches / limit,
            **scores,
            "examples": limit,
            "decoded_examples": limit,
        }

    @torch.no_grad()
    def samples(self, model, n: int = 5) -> list[dict]:
        """The first `n` decodes of the test split (and, for text, of the training split)
        beside their sources and references, for the report."""
        out = []
        for split in ("test", "train") if self.text else ("test",):
            data = self.splits[split]
            idx = torch.arange(min(n, len(data)))
            src, tgt = (t.to(self.device) for t in data.batch(idx, self.pad_id))
            predicted = self._decode(model, src, tgt)
            for i, (s, t, p) in enumerate(zip(src, tgt, predicted)):
                if self.text:
                    source, reference, hypothesis = self.raw[split]["src"][i], self.raw[split]["tgt"][i], self._hypothesis(p)
                else:
                    source_tokens = self.meta["src_tokens"]
                    source = self._shown([source_tokens[j] for j in s.tolist()[1:] if j not in (self.pad_id, self.stop_id)])
                    reference, hypothesis = self._shown(self._tokens(t)), self._shown(self._tokens(p))
                out.append({"split": split, "source": source, "reference": reference, "hypothesis": hypothesis})
        return out

    def _shown(self, tokens: list[str]) -> str:
        """Tokens as a reader sees them: characters joined back into text for character-level
        tasks (`1981-04-11`, not `1 9 8 1 - ...`), symbols space-separated otherwise."""
        return ("" if self.meta.get("character_level") else " ").join(tokens)


def _raw_text(path: Path) -> dict[str, list[str]]:
    """The untokenised source and target sentences stored beside the ids of a text split."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"src": [r["src_text"] for r in records], "tgt": [r["tgt_text"] for r in records]}
