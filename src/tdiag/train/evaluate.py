"""Held-out evaluation of a seq2seq model: teacher-forced loss and token accuracy,
and exact match of greedy decodes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tdiag.data.batching import PairedData
from tdiag.train.metrics import exact_match, token_counts


@torch.no_grad()
def evaluate_seq2seq(
    model,
    data: PairedData,
    *,
    device: torch.device,
    pad_id: int,
    go_id: int,
    stop_id: int,
    decode_examples: int | None = None,
    batch_size: int = 500,
) -> dict:
    """Metrics over the whole split; greedy decoding over its first `decode_examples`."""
    was_training = model.training
    model.eval()
    loss_sum, correct, total, matches, decoded = 0.0, 0, 0, 0, 0
    limit = len(data) if decode_examples is None else min(decode_examples, len(data))
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        src, tgt = (t.to(device) for t in data.batch(idx, pad_id))
        logits = model(src, tgt[:, :-1])
        labels = tgt[:, 1:]
        loss_sum += float(
            F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=pad_id, reduction="sum")
        )
        c, n = token_counts(logits, labels, pad_id)
        correct, total = correct + c, total + n
        n_decode = max(0, min(limit - start, len(idx)))
        if n_decode:
            # One position beyond the target, so a prediction that runs on is caught.
            length = min(tgt.shape[1] + 1, model.max_len)
            predicted = model.greedy_decode(src[:n_decode], length, go_id, stop_id)
            matches += int(exact_match(predicted, tgt[:n_decode], pad_id).sum())
            decoded += n_decode
    model.train(was_training)
    loss = loss_sum / max(total, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / max(total, 1),
        "exact_match": matches / max(decoded, 1),
        "examples": len(data),
        "decoded_examples": decoded,
    }
