"""Decoding an `EncoderDecoder` one token at a time: greedy search and beam search.

Both run the decoder incrementally: each layer keeps the keys and values of the positions
decoded so far, and the keys and values of the encoder memory are projected once, so a
step costs one position instead of the whole prefix. Position t of a causal decoder
depends on positions 0..t only, so this gives the logits of the full forward pass
(tests/test_decoding.py checks them against `EncoderDecoder.decode`).

Beam search keeps `beam_size` hypotheses per sentence and ranks them by their
length-normalised log-probability, sum(log p) / length, the length counting the
generated tokens and `<stop>` (Wu et al. 2016, section 7, with alpha = 1). A finished
hypothesis stays in the beam with its score frozen; a sentence's search ends when every
hypothesis in its beam has finished, or no live one can still beat its best finished
one, or at `max_len`. With `beam_size` 1 it is greedy search step for step, so the two
give the same output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tdiag.models.transformer import EncoderDecoder


class _IncrementalDecoder:
    """The decoder stack of `model` fed one target position per call, for `src` (N, S),
    decoding at most `steps` positions."""

    def __init__(self, model: EncoderDecoder, src: Tensor, steps: int):
        self.model = model
        memory = model.encode(src)  # (N, S, d)
        # Cross-attention may see every real source position: (N, 1, 1, S), True = attend.
        self.src_allowed = (src != model.pad_id)[:, None, None, :]
        # Keys and values of the memory for each layer's cross-attention, projected once.
        self.memory_kv = [
            (self._heads(attn, attn.w_k(memory)), self._heads(attn, attn.w_v(memory)))
            for attn in (layer.cross_attn for layer in model.decoder.layers)
        ]
        # Keys and values of the decoded positions, written in place: (N, h, steps, d_k) each.
        first = model.decoder.layers[0].self_attn
        shape = (src.size(0), first.n_heads, steps, first.d_k)
        self.self_kv = [(memory.new_empty(shape), memory.new_empty(shape)) for _ in model.decoder.layers]
        self.length = 0

    @staticmethod
    def _heads(attn, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        return x.view(n, t, attn.n_heads, attn.d_k).transpose(1, 2)  # (N, h, T, d_k)

    def _attend(self, attn, x_q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None) -> Tensor:
        q = self._heads(attn, attn.w_q(x_q))  # (N, h, 1, d_k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (N, h, 1, d_k)
        return attn.w_o(out.transpose(1, 2).reshape(x_q.shape))  # (N, 1, d)

    def _self_attend(self, i: int, attn, y: Tensor) -> Tensor:
        k, v = self.self_kv[i]
        t = self.length
        k[:, :, t : t + 1] = self._heads(attn, attn.w_k(y))  # (N, h, 1, d_k)
        v[:, :, t : t + 1] = self._heads(attn, attn.w_v(y))
        # The newest position may see every earlier one: causality needs no mask here.
        return self._attend(attn, y, k[:, :, : t + 1], v[:, :, : t + 1], None)

    def step(self, tokens: Tensor) -> Tensor:
        """tokens (N,) at the next position -> next-token logits (N, V)."""
        model, t = self.model, self.length
        if t >= min(model.max_len, self.self_kv[0][0].size(2)):
            raise ValueError(f"decoding past {t} positions (model max_len {model.max_len})")
        embed = model.tgt_embed
        x = embed.dropout(embed.tokens(tokens[:, None]) + embed.positions(t + 1)[t:])  # (N, 1, d)
        for i, layer in enumerate(model.decoder.layers):
            # The same sublayers and residual/LayerNorm placement as DecoderLayer.forward.
            x = layer.self_attn_res(x, lambda y: self._self_attend(i, layer.self_attn, y))
            k, v = self.memory_kv[i]
            x = layer.cross_attn_res(x, lambda y: self._attend(layer.cross_attn, y, k, v, self.src_allowed))
            x = layer.ffn_res(x, layer.ffn)
        self.length += 1
        return model.generator(model.decoder.norm(x))[:, 0]  # (N, V)

    def reorder(self, parents: Tensor) -> None:
        """Row r continues the hypothesis of row parents[r] (beam search). Rows only move
        within a sentence's beam, whose copies of the memory are equal, so only the
        decoder's own keys and values move, and only for rows whose parent is another row."""
        moved = (parents != torch.arange(len(parents), device=parents.device)).nonzero()[:, 0]
        if len(moved):
            t = self.length
            for k, v in self.self_kv:
                k[moved, :, :t] = k[parents[moved], :, :t]
                v[moved, :, :t] = v[parents[moved], :, :t]

    def keep(self, rows: Tensor) -> None:
        """Drop every row but `rows` (sentences whose search has ended leave the batch)."""
        self.src_allowed = self.src_allowed[rows]
        self.memory_kv = [(k[rows], v[rows]) for k, v in self.memory_kv]
        self.self_kv = [(self._rows(k, rows), self._rows(v, rows)) for k, v in self.self_kv]

    def _rows(self, buffer: Tensor, rows: Tensor) -> Tensor:
        """`buffer[rows]`, copying only the positions decoded so far."""
        out = buffer.new_empty((len(rows), *buffer.shape[1:]))
        out[:, :, : self.length] = buffer[rows, :, : self.length]
        return out


def _check_length(model: EncoderDecoder, max_len: int) -> None:
    if not 1 <= max_len <= model.max_len:
        raise ValueError(f"decoding max_len {max_len} must be between 1 and the model's max_len {model.max_len}")


@torch.no_grad()
def greedy(model: EncoderDecoder, src: Tensor, max_len: int, go_id: int, stop_id: int) -> Tensor:
    """Argmax decoding from `<go>`: src (B, S) -> (B, L), L <= max_len, `<go>` included,
    positions after a row's `<stop>` set to padding (the format of `EncoderDecoder.greedy_decode`)."""
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
    was_training = model.training
    model.eval()
    try:
        return _search(model, src, max_len, go_id, stop_id, beam_size)
    finally:
        model.train(was_training)


def _search(model, src: Tensor, max_len: int, go_id: int, stop_id: int, k: int) -> tuple[Tensor, Tensor]:
    b, device, pad = src.size(0), src.device, model.pad_id
    longest = max_len - 1  # generated tokens a hypothesis can reach
    decoder = _IncrementalDecoder(model, src.repeat_interleave(k, dim=0), longest)  # row = sentence * K + beam
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
    was_training = model.training
    model.eval()
    try:
        log_p = model(src, seqs[:, :-1]).float().log_softmax(dim=-1)  # (B, L-1, V)
    finally:
        model.train(was_training)
    targets = seqs[:, 1:]
    token_lp = log_p.gather(-1, targets[..., None])[..., 0]  # (B, L-1)
    # Count tokens up to and including the first <stop> (or all, if it never stopped).
    stopped_before = torch.cumsum((targets == stop_id).long(), dim=1) - (targets == stop_id).long()
    keep = stopped_before == 0
    return (token_lp * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
