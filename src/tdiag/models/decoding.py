"""Decoding one token at a time: greedy and beam search for an `EncoderDecoder`, and
greedy continuation of a prompt for the language models (`continue_greedy`).

Both run the model's own decoder incrementally (`EncoderDecoder.start_decoding` and
`decode_step`, models/transformer.py): each self-attention block keeps the keys and
values of the positions decoded so far, and each cross-attention block the keys and
values of the encoder memory, projected once (`KVCache`, models/attention.py), so a step
costs one position instead of the whole prefix. The steps go through the same
`MultiHeadAttention` blocks as training, so the configured `attention` backend computes
them too, and they give the logits of the full forward pass (tests/test_decoding.py).

Beam search keeps `beam_size` hypotheses per sentence and ranks them by their
length-normalised log-probability, sum(log p) / length, the length counting the
generated tokens and `<stop>` (Wu et al. 2016, section 7, with alpha = 1). A finished
hypothesis stays in the beam with its score frozen; a sentence's search ends when every
hypothesis in its beam has finished, or no live one can still beat its best finished
one, or at `max_len`. With `beam_size` 1 it is greedy search step for step, so the two
give the same output.

A GPT continues through the same kind of cache (`GPT.start_decoding`); an LSTM carries
its recurrent state, which is its cache.

A model without `start_decoding` (a user's own, models/custom.py) is decoded by full
recomputation: each step runs the model on the whole prefix decoded so far and keeps
the last position's logits (`Recompute`), the same search over the same scores at the
cost of the prefix per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tdiag.models.gpt import GPT
from tdiag.models.lstm import LSTMLanguageModel
from tdiag.models.modes import evaluating
from tdiag.models.transformer import EncoderDecoder


class Recompute:
    """The decoding state of an encoder-decoder without a key/value cache: the sources
    and the decoded prefixes, row for row; `step` reruns `model(src, prefix)`."""

    def __init__(self, model, src: Tensor):
        self.model, self.src = model, src
        self.prefix = src.new_empty((src.size(0), 0))  # (N, t)

    def step(self, tokens: Tensor) -> Tensor:
        """tokens (N,) appended to the prefixes -> next-token logits (N, V)."""
        self.prefix = torch.cat([self.prefix, tokens[:, None]], dim=1)
        return self.model(self.src, self.prefix)[:, -1]

    def reorder(self, parents: Tensor) -> None:
        self.prefix = self.prefix[parents]

    def keep(self, rows: Tensor) -> None:
        self.src, self.prefix = self.src[rows], self.prefix[rows]


class Cached:
    """The decoding state of a model with its own cache (`start_decoding`, `decode_step`)."""

    def __init__(self, model, src: Tensor, steps: int):
        self.model, self.cache = model, model.start_decoding(src, steps)

    def step(self, tokens: Tensor) -> Tensor:
        return self.model.decode_step(tokens, self.cache)

    def reorder(self, parents: Tensor) -> None:
        self.cache.reorder(parents)

    def keep(self, rows: Tensor) -> None:
        self.cache.keep(rows)


def _decoder(model, src: Tensor, steps: int) -> Cached | Recompute:
    return Cached(model, src, steps) if hasattr(model, "start_decoding") else Recompute(model, src)


def _check_length(model: EncoderDecoder, max_len: int) -> None:
    if not 1 <= max_len <= model.max_len:
        raise ValueError(f"decoding max_len {max_len} must be between 1 and the model's max_len {model.max_len}")


@torch.no_grad()
def greedy(model: EncoderDecoder, src: Tensor, max_len: int, go_id: int, stop_id: int) -> Tensor:
    """Argmax decoding from `<go>`: src (B, S) -> (B, L), L <= max_len, `<go>` included,
    positions after a row's `<stop>` set to padding; decoding ends once every row has stopped."""
    return beam_search(model, src, max_len, go_id, stop_id, beam_size=1)[0]


@torch.no_grad()
def beam_search(
    model: EncoderDecoder, src: Tensor, max_len: int, go_id: int, stop_id: int, beam_size: int
) -> tuple[Tensor, Tensor]:
    """The best hypothesis per sentence and its length-normalised log-probability.

    src (B, S) -> sequences (B, L) in `greedy`'s format, scores (B,). Runs in eval mode
    (no dropout) and restores the caller's mode.
    """
    _check_length(model, max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1 (got {beam_size})")
    with evaluating(model):
        return _search(model, src, max_len, go_id, stop_id, beam_size)


def _search(model, src: Tensor, max_len: int, go_id: int, stop_id: int, k: int) -> tuple[Tensor, Tensor]:
    b, device, pad = src.size(0), src.device, model.pad_id
    longest = max_len - 1  # generated tokens a hypothesis can reach
    decoder = _decoder(model, src.repeat_interleave(k, dim=0), longest)  # row = sentence * K + beam
    active = torch.arange(b, device=device)  # sentences still searching, in decoder row order
    seqs = torch.full((b * k, 1), go_id, dtype=torch.long, device=device)  # (A*K, t)
    # Only the first hypothesis of each beam is live at the start, so the K copies of
    # <go> do not fill the beam with duplicates.
    log_prob = torch.full((b, k), float("-inf"), device=device)
    log_prob[:, 0] = 0.0
    lengths = torch.zeros(b, k, device=device)  # generated tokens, <stop> included
    done = torch.zeros(b, k, dtype=torch.bool, device=device)
    best_seq: list[Tensor | None] = [None] * b
    best_score = torch.zeros(b, device=device)

    def finish(which: Tensor) -> None:
        """Record the best hypothesis of the active sentences at positions `which`."""
        score = log_prob[which] / lengths[which].clamp(min=1)  # (n, K)
        top = score.argmax(dim=1)
        for i, j, s in zip(which.tolist(), top.tolist(), score.gather(1, top[:, None])[:, 0]):
            best_seq[int(active[i])] = seqs[i * k + j, : 1 + int(lengths[i, j])]
            best_score[active[i]] = s

    for _ in range(longest):
        a = len(active)
        step_lp = decoder.step(seqs[:, -1]).float().log_softmax(dim=-1).view(a, k, -1)  # (A, K, V)
        vocab = step_lp.size(-1)
        # A finished hypothesis has one continuation, <pad>, which changes nothing.
        step_lp = step_lp.masked_fill(done[..., None], float("-inf"))
        step_lp[..., pad] = step_lp[..., pad].masked_fill(done, 0.0)
        total = log_prob[..., None] + step_lp  # (A, K, V)
        new_len = lengths + (~done).float()  # (A, K)
        score = (total / new_len.clamp(min=1)[..., None]).view(a, -1)  # (A, K*V)
        best = score.topk(k, dim=-1).indices  # (A, K)
        parent, token = best // vocab, best % vocab  # (A, K)
        log_prob = total.view(a, -1).gather(1, best)
        lengths = new_len.gather(1, parent)
        done = done.gather(1, parent) | (token == stop_id)
        flat_parent = (parent + torch.arange(a, device=device)[:, None] * k).view(-1)  # (A*K,)
        seqs = torch.cat([seqs[flat_parent], token.view(-1, 1)], dim=1)
        decoder.reorder(flat_parent)
        # A sentence is decided once no live hypothesis can beat its best finished one: a
        # live score can rise at most to log_prob / longest (only certain tokens, log p = 0,
        # up to the length limit), and its current score is lower still.
        finished = torch.where(done, log_prob / lengths.clamp(min=1), float("-inf")).amax(dim=1, keepdim=True)
        decided = (done | (log_prob / longest < finished)).all(dim=1)  # (A,)
        if bool(decided.any()):
            finish(decided.nonzero()[:, 0])
            stay = (~decided).nonzero()[:, 0]
            rows = (stay[:, None] * k + torch.arange(k, device=device)).view(-1)
            active, log_prob, lengths, done, seqs = active[stay], log_prob[stay], lengths[stay], done[stay], seqs[rows]
            if not len(active):
                break
            decoder.keep(rows)
    if len(active):
        finish(torch.arange(len(active), device=device))
    width = max(len(s) for s in best_seq)
    out = torch.full((b, width), pad, dtype=torch.long, device=device)
    for i, s in enumerate(best_seq):
        out[i, : len(s)] = s
    return out, best_score


@torch.no_grad()
def sequence_score(model: EncoderDecoder, src: Tensor, seqs: Tensor, stop_id: int) -> Tensor:
    """Length-normalised log-probability of given decodes (`greedy`'s format) under the model:
    the score `beam_search` ranks by, computed by one teacher-forced pass. -> (B,)"""
    with evaluating(model):
        log_p = model(src, seqs[:, :-1]).float().log_softmax(dim=-1)  # (B, L-1, V)
    targets = seqs[:, 1:]
    token_lp = log_p.gather(-1, targets[..., None])[..., 0]  # (B, L-1)
    # Count tokens up to and including the first <stop> (or all, if it never stopped).
    stopped_before = torch.cumsum((targets == stop_id).long(), dim=1) - (targets == stop_id).long()
    keep = stopped_before == 0
    return (token_lp * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


@torch.no_grad()
def continue_greedy(model: GPT | LSTMLanguageModel, context: Tensor, length: int) -> list[int]:
    """The `length` argmax tokens that follow `context` (T,) under a language model, in
    eval mode. A GPT whose position table cannot hold context and continuation slides a
    window of its last `max_len` tokens, recomputed each step (no cache can hold that);
    so does a model without `start_decoding`, whatever the length."""
    generated: list[int] = []
    with evaluating(model):
        if isinstance(model, LSTMLanguageModel):
            logits, state = model(context[None])
            for _ in range(length):
                token = logits[0, -1].argmax()
                generated.append(int(token))
                logits, state = model(token.view(1, 1), state)
        elif hasattr(model, "start_decoding") and len(context) + length <= model.max_len:
            cache = model.start_decoding(len(context) + length)
            logits = model(context[None], cache)
            for _ in range(length):
                token = logits[0, -1].argmax()
                generated.append(int(token))
                logits = model(token.view(1, 1), cache)
        else:
            tokens = context
            for _ in range(length):
                token = model(tokens[-model.max_len :][None])[0, -1].argmax()
                generated.append(int(token))
                tokens = torch.cat([tokens, token.view(1)])
    return generated
