"""Encoder-decoder Transformer of Vaswani et al. 2017, "Attention Is All You Need", section 3.

Departures from the paper are named options of `ModelConfig`, never silent:

- `norm`: 'post' is the paper's LN(x + Sublayer(x)) (section 3.1); 'pre' is
  x + Sublayer(LN(x)) with a final LayerNorm after each stack (Xiong et al. 2020).
- `positions`: 'sinusoidal' is section 3.5; 'learned' is the alternative the paper
  reports as nearly identical (section 3.5, table 3 row E).
- `attention`: 'manual' or 'sdpa', see models/attention.py. Every `MultiHeadAttention`
  block is built with it, and decoding runs through the same blocks: `Decoder.forward`
  takes an optional `DecodingCache` and hands each layer its `KVCache`s, and
  `EncoderDecoder.decode_step` feeds it one target position at a time (models/decoding.py
  searches with it; models/gpt.py generates the same way).
- Embeddings are not multiplied by sqrt(d_model) (section 3.4); `init.embedding_std`
  sets their scale instead (models/init.py).
- `checkpointing`: 'blocks' recomputes each encoder and decoder layer's activations
  in backward (models/checkpointing.py), an engineering choice the paper does not make.

Source and target have separate token embeddings and separate position tables; the
output projection (`generator`) is not tied to the target embedding.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from tdiag.config import ModelConfig
from tdiag.models.attention import KVCache, MultiHeadAttention
from tdiag.models.checkpointing import run_block
from tdiag.models.init import init_weights


class SinusoidalPositions(nn.Module):
    """Fixed encodings, section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
        inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(d/2),)
        angles = pos * inv_freq  # (max_len, ceil(d/2))
        table = torch.empty(max_len, d_model, dtype=torch.float64)
        table[:, 0::2] = angles.sin()
        table[:, 1::2] = angles.cos()[:, : d_model // 2]
        # Not persistent: it is a function of (max_len, d_model), not state to checkpoint.
        self.register_buffer("table", table.to(torch.get_default_dtype()), persistent=False)

    def forward(self, length: int) -> Tensor:
        return self.table[:length]  # (T, d)


class LearnedPositions(nn.Module):
    """One trained vector per position (section 3.5's alternative)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)

    def forward(self, length: int) -> Tensor:
        return self.table.weight[:length]  # (T, d)


POSITIONS: dict[str, Callable[[int, int], nn.Module]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
}


class InputEmbedding(nn.Module):
    """Token embedding plus position, then dropout (section 5.4)."""

    def __init__(self, vocab: int, cfg: ModelConfig, side: str):
        super().__init__()
        if cfg.positions not in POSITIONS:
            raise ValueError(f"unknown positions {cfg.positions!r}; allowed: {', '.join(POSITIONS)}")
        self.side = side
        self.max_len = cfg.max_len
        self.tokens = nn.Embedding(vocab, cfg.d_model)
        self.positions = POSITIONS[cfg.positions](cfg.max_len, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        """ids (B, T) at positions start..start+T-1 (start > 0 when decoding step by step)."""
        length = start + ids.size(1)
        if length > self.max_len:
            raise ValueError(
                f"{self.side} length {length} exceeds the model's max_len {self.max_len}; "
                "shorten the input or raise model.max_len"
            )
        return self.dropout(self.tokens(ids) + self.positions(length)[start:])  # (B, T, d)


class Residual(nn.Module):
    """A sublayer with its residual connection, dropout and LayerNorm (section 5.4).

    'post': LN(x + dropout(f(x))), the paper's placement. 'pre': x + dropout(f(LN(x))).
    """

    def __init__(self, d_model: int, dropout: float, norm: str):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"unknown norm {norm!r}; allowed: pre, post")
        self.pre = norm == "pre"
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class _ReLUBackwardFromSign(torch.autograd.Function):
    """ReLU with a backward that needs no mask, for `torch.compile`.

    ReLU's gradient is the incoming gradient where the output is positive and 0 elsewhere.
    Traced by `torch.compile`, every way of writing that with a comparison (torch's own
    ReLU backward, `torch.where(y > 0, g, 0)`, `g * (y > 0)`) is partitioned the same way:
    the comparison moves into the forward graph and its result is saved for the backward
    as a bool tensor. On this project's 2-core AMD EPYC (AVX2), TorchInductor's C++ kernel
    that writes that bool mask runs about 100 times slower than a float store of the same
    size (5.3 ms against 33 us for the 153,600 activations of the copy task's FFN), which
    made the compiled copy-task step slower than the eager one
    (`benchmarks/RESULTS.md`, "The model code itself").

    Written as the incoming gradient times the output's sign, the backward reads the saved
    float output (which the second linear layer's weight gradient needs anyway) and no
    bool tensor is made. For finite values the gradient is torch's: the output is >= 0, so
    its sign is 1 where torch passes the gradient through and 0 where torch writes 0 (a
    negative gradient times 0 is -0.0, which adds and scales as 0). Eager runs keep
    torch's own ReLU, so they are bitwise what they were.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * torch.sign(y)


def relu(x: Tensor) -> Tensor:
    """max(0, x); under `torch.compile`, with the mask-free backward above."""
    if torch.compiler.is_compiling():
        return _ReLUBackwardFromSign.apply(x)
    return torch.relu(x)


class FeedForward(nn.Module):
    """Position-wise FFN, eq. 2: max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        # Dropout on the hidden activations, as in the annotated transformer.
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(relu(self.w_1(x))))  # (B, T, d)


class SelfAttentionLayer(nn.Module):
    """Self-attention then FFN, each wrapped in a `Residual` (section 3.1): an encoder
    layer, and with `causal=True` the block of a decoder-only language model."""

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cfg.attention)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.self_attn_res = Residual(cfg.d_model, cfg.dropout, cfg.norm)
        self.ffn_res = Residual(cfg.d_model, cfg.dropout, cfg.norm)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """cache: this layer's self-attention keys and values when decoding step by step."""
        x = self.self_attn_res(
            x, lambda y: self.self_attn(y, y, key_padding_mask, causal=self.causal, cache=cache)
        )
        return self.ffn_res(x, self.ffn)  # (B, T, d)


class DecoderLayer(nn.Module):
    """Causal self-attention, attention over the encoder memory, then FFN (section 3.1)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cfg.attention)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cfg.attention)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.self_attn_res = Residual(cfg.d_model, cfg.dropout, cfg.norm)
        self.cross_attn_res = Residual(cfg.d_model, cfg.dropout, cfg.norm)
        self.ffn_res = Residual(cfg.d_model, cfg.dropout, cfg.norm)

    def forward(
        self, x: Tensor, memory: Tensor | None, src_pad: Tensor, caches: tuple[KVCache, KVCache] | None = None
    ) -> Tensor:
        """caches: (self-attention, memory) caches when decoding step by step; the memory
        cache holds the projected memory, and `memory` may then be None."""
        self_cache, memory_cache = (None, None) if caches is None else caches
        # With right padding, causality already hides every pad key from every real
        # query, so no padding mask is needed here; without one, SDPA can take its
        # flash/efficient causal kernels on GPU. Outputs at pad positions are ignored.
        x = self.self_attn_res(x, lambda y: self.self_attn(y, y, None, causal=True, cache=self_cache))
        # Queries from the decoder, keys and values from the memory (section 3.2.3).
        x = self.cross_attn_res(x, lambda y: self.cross_attn(y, memory, src_pad, cache=memory_cache))
        return self.ffn_res(x, self.ffn)  # (B, T, d)


def _final_norm(cfg: ModelConfig) -> nn.Module:
    """Pre-norm leaves the residual stream unnormalised, so each stack ends with a LayerNorm."""
    return nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()


class DecodingCache:
    """What a model keeps between decoding steps: per layer, the self-attention's keys and
    values of the positions decoded so far, and for an encoder-decoder the memory's keys
    and values (projected once) and the source padding that hides them.

    `length` is the number of positions decoded, so the next one is embedded at that offset.
    """

    def __init__(self, self_attn: list[KVCache], memory: list[KVCache] | None = None, src_pad: Tensor | None = None):
        self.self_attn = self_attn
        self.memory = memory or []
        self.src_pad = src_pad  # (N, S), True at padding

    @property
    def length(self) -> int:
        return self.self_attn[0].length

    def reorder(self, parents: Tensor) -> None:
        """Row r continues the decode of row parents[r] (beam search). Rows move only
        within the copies of one source (a sentence's beam), whose memory keys, values and
        padding are equal, so only the decoded positions' keys and values move."""
        for cache in self.self_attn:
            cache.reorder(parents)

    def keep(self, rows: Tensor) -> None:
        """Drop every row but `rows` (decodes that have ended leave the batch)."""
        for cache in self.self_attn + self.memory:
            cache.keep(rows)
        if self.src_pad is not None:
            self.src_pad = self.src_pad[rows]


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(SelfAttentionLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.norm = _final_norm(cfg)
        self.checkpointing = cfg.checkpointing == "blocks"

    def forward(self, x: Tensor, src_pad: Tensor) -> Tensor:
        for layer in self.layers:
            x = run_block(layer, self.checkpointing, x, src_pad)
        return self.norm(x)  # (B, S, d)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = _final_norm(cfg)
        self.checkpointing = cfg.checkpointing == "blocks"

    def forward(
        self, x: Tensor, memory: Tensor | None, src_pad: Tensor, cache: DecodingCache | None = None
    ) -> Tensor:
        for i, layer in enumerate(self.layers):
            if cache is None:
                x = run_block(layer, self.checkpointing, x, memory, src_pad)
            else:
                x = layer(x, memory, src_pad, (cache.self_attn[i], cache.memory[i]))
        return self.norm(x)  # (B, T, d)


class EncoderDecoder(nn.Module):
    """The full model: `forward(src, tgt_in)` -> next-token logits (B, T, tgt_vocab).

    Padding masks come from `pad_id`: source pads are hidden from encoder self-attention
    and from cross-attention; decoder self-attention is causal, which with right
    padding hides target pads from every real position. Initialisation follows `cfg.init` (models/init.py).
    """

    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int = 0):
        super().__init__()
        if not (0 <= pad_id < min(src_vocab, tgt_vocab)):
            raise ValueError(
                f"pad_id {pad_id} is outside the vocabularies (src {src_vocab}, tgt {tgt_vocab})"
            )
        self.cfg = cfg
        self.pad_id = pad_id
        self.max_len = cfg.max_len
        self.src_embed = InputEmbedding(src_vocab, cfg, "source")
        self.tgt_embed = InputEmbedding(tgt_vocab, cfg, "target")
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.generator = nn.Linear(cfg.d_model, tgt_vocab)
        embeds = (self.src_embed, self.tgt_embed)
        init_weights(
            self,
            cfg.init,
            cfg.d_model,
            tokens=[e.tokens for e in embeds],
            positions=[e.positions.table for e in embeds if isinstance(e.positions, LearnedPositions)],
        )

    def encode(self, src: Tensor) -> Tensor:
        """src (B, S) token ids -> memory (B, S, d)."""
        return self.encoder(self.src_embed(src), src == self.pad_id)

    def decode(self, memory: Tensor, src: Tensor, tgt_in: Tensor) -> Tensor:
        """memory (B, S, d), src (B, S) for its padding, tgt_in (B, T) -> logits (B, T, V)."""
        x = self.decoder(self.tgt_embed(tgt_in), memory, src == self.pad_id)
        return self.generator(x)  # (B, T, V)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(self.encode(src), src, tgt_in)  # (B, T, V)

    def start_decoding(self, src: Tensor, steps: int) -> DecodingCache:
        """Encode src (N, S) and project the memory's keys and values for every layer's
        cross-attention, once: the cache for up to `steps` calls of `decode_step`."""
        memory = self.encode(src)  # (N, S, d)
        return DecodingCache(
            self_attn=[KVCache(steps) for _ in self.decoder.layers],
            memory=[layer.cross_attn.memory_cache(memory) for layer in self.decoder.layers],
            src_pad=src == self.pad_id,
        )

    def decode_step(self, tokens: Tensor, cache: DecodingCache) -> Tensor:
        """tokens (N,) at target position `cache.length` -> next-token logits (N, V).

        Position t of the causal decoder depends on positions 0..t only, so the steps give
        the logits of `decode` on the whole prefix (tests/test_decoding.py)."""
        x = self.tgt_embed(tokens[:, None], start=cache.length)  # (N, 1, d)
        return self.generator(self.decoder(x, None, cache.src_pad, cache))[:, 0]  # (N, V)
