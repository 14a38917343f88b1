"""Decoder-only Transformer language model in the style of GPT (Radford et al. 2018).

A stack of causal `SelfAttentionLayer`s (models/transformer.py): the encoder-decoder's
decoder block without cross-attention, built from the same parts, so the variants mean
the same thing in both families:

- `norm`: 'pre' (GPT-2's placement, Radford et al. 2019, section 2.3, with a final
  LayerNorm) or 'post' (the original Transformer's LN(x + Sublayer(x))).
- `positions`: 'learned' (GPT's choice) or 'sinusoidal'.
- `attention`: 'manual' or 'sdpa' (models/attention.py), in training and in decoding
  alike: generation step by step passes a `DecodingCache` through the same layers.
- `tie_embeddings`: the output projection's weight is the token embedding (Press &
  Wolf 2017); its bias stays a separate parameter.
- `checkpointing`: 'blocks' recomputes each layer's activations in backward
  (models/checkpointing.py).

Initialisation follows `cfg.init` (models/init.py). With tied embeddings the shared
matrix gets the token-embedding initialisation: init_weights sets Linear weights first
and token tables after, so the embedding's scheme is the one that remains.
"""

from __future__ import annotations

from torch import Tensor, nn

from tdiag.config import ModelConfig
from tdiag.models.init import init_weights
from tdiag.models.attention import KVCache
from tdiag.models.checkpointing import run_block
from tdiag.models.transformer import DecodingCache, InputEmbedding, LearnedPositions, SelfAttentionLayer, _final_norm
from tdiag.models.vocabulary_head import VocabularyHead


class GPT(nn.Module):
    """`forward(tokens (B, T))` -> next-token logits (B, T, vocab_size); T <= cfg.max_len.

    `layers` holds the blocks (one `nn.Module` per layer, for activation-norm hooks).
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.max_len = cfg.max_len
        self.embed = InputEmbedding(vocab_size, cfg, "input")
        # No padding mask: LM segments are dense, and `causal` alone lets SDPA take its
        # flash/efficient causal kernels on GPU.
        self.layers = nn.ModuleList(SelfAttentionLayer(cfg, causal=True) for _ in range(cfg.n_layers))
        self.checkpointing = cfg.checkpointing == "blocks"
        self.norm = _final_norm(cfg)
        self.output = VocabularyHead(cfg.d_model, vocab_size)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.tokens.weight
        init_weights(
            self,
            cfg.init,
            cfg.d_model,
            tokens=[self.embed.tokens],
            positions=[self.embed.positions.table] if isinstance(self.embed.positions, LearnedPositions) else [],
        )

    def start_decoding(self, steps: int) -> DecodingCache:
        """An empty cache for generating up to `steps` positions (prompt included) with `forward`."""
        return DecodingCache([KVCache(steps) for _ in self.layers])

    def forward(self, tokens: Tensor, cache: DecodingCache | None = None, targets: Tensor | None = None,
                label_smoothing: float = 0.0) -> Tensor:
        """cache: when generating, `tokens` continue the positions the cache holds: the
        prompt into an empty cache, then one token per call, each attending over the
        cached keys and values instead of recomputing the prefix. targets (B, T): the
        summed token cross-entropy instead of the logits
        (`VocabularyHead.summed_cross_entropy`, which on the CPU never builds them)."""
        x = self.embed(tokens, start=0 if cache is None else cache.length)  # (B, T, d); refuses past max_len
        for i, layer in enumerate(self.layers):
            if cache is None:
                x = run_block(layer, self.checkpointing, x)
            else:
                x = layer(x, cache=cache.self_attn[i])
        if targets is None:
            return self.output(self.norm(x))  # (B, T, V)
        return self.output.summed_cross_entropy(self.norm(x), targets, label_smoothing)
