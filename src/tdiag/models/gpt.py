"""Decoder-only Transformer language model in the style of GPT (Radford et al. 2018).

A stack of the encoder-decoder's decoder blocks without cross-attention: causal
self-attention then FFN, each in a `Residual` (models/transformer.py), so the variants
mean the same thing in both families:

- `norm`: 'pre' (GPT-2's placement, Radford et al. 2019, section 2.3, with a final
  LayerNorm) or 'post' (the original Transformer's LN(x + Sublayer(x))).
- `positions`: 'learned' (GPT's choice) or 'sinusoidal'.
- `attention`: 'manual' or 'sdpa' (models/attention.py).
- `tie_embeddings`: the output projection's weight is the token embedding (Press &
  Wolf 2017); its bias stays a separate parameter.

Initialisation follows `cfg.init` (models/init.py). With tied embeddings the shared
matrix gets the token-embedding initialisation: init_weights sets Linear weights first
and token tables after, so the embedding's scheme is the one that remains.
"""

from __future__ import annotations

from torch import Tensor, nn

from tdiag.config import ModelConfig
from tdiag.models.attention import MultiHeadAttention
from tdiag.models.init import init_weights
from tdiag.models.transformer import FeedForward, InputEmbedding, LearnedPositions, Residual, _final_norm


class GPTBlock(nn.Module):
    """Causal self-attention then FFN, each wrapped in a `Residual`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cfg.attention)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.self_attn_res = Residual(cfg.d_model, cfg.dropout, cfg.norm)
        self.ffn_res = Residual(cfg.d_model, cfg.dropout, cfg.norm)

    def forward(self, x: Tensor) -> Tensor:
        # No padding mask: LM segments are dense, and `causal` alone lets SDPA take its
        # flash/efficient causal kernels on GPU.
        x = self.self_attn_res(x, lambda y: self.self_attn(y, y, None, causal=True))
        return self.ffn_res(x, self.ffn)  # (B, T, d)


class GPT(nn.Module):
    """`forward(tokens (B, T))` -> next-token logits (B, T, vocab_size); T <= cfg.max_len.

    `layers` holds the blocks (one `nn.Module` per layer, for activation-norm hooks).
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.embed = InputEmbedding(vocab_size, cfg, "input")
        self.layers = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = _final_norm(cfg)
        self.output = nn.Linear(cfg.d_model, vocab_size)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.tokens.weight
        init_weights(
            self,
            cfg.init,
            cfg.d_model,
            tokens=[self.embed.tokens],
            positions=[self.embed.positions.table] if isinstance(self.embed.positions, LearnedPositions) else [],
        )

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, T, d); refuses T > max_len
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))  # (B, T, V)
