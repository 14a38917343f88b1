"""good_gpt.py with a deliberate causal leak: its attention has no causal mask.

    studies:
      lm:
        model: {arch: custom, factory: "examples/custom_model/leaky_gpt.py:build"}

It meets the decoder-only contract (tokens (B, T) -> logits (B, T, V)) and trains, but
the logits at position t see tokens after t, among them the very token they predict, so
its teacher-forced loss and perplexity are not those of a language model. Everything
else is good_gpt.py line for line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.dropout = nn.Dropout(dropout)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # (B, nh, T, hs): the leak
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attend(self.ln_1(x)))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, vocab: int, d_model: int, n_heads: int, n_layers: int, d_ff: int, max_len: int,
                 dropout: float):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, d_model), nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.ln_f, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> next-token logits (B, T, V)."""
        x = self.tokens(tokens) + self.positions(torch.arange(tokens.size(1), device=tokens.device))  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build(*, tgt_vocab: int, config, **unused) -> GPT:
    """The factory tdiag calls: the vocabulary size, and the run's `model` section for the sizes."""
    return GPT(tgt_vocab, config.d_model, config.n_heads, config.n_layers, config.d_ff, config.max_len, config.dropout)
