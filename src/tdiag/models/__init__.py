"""Model construction: `build_model` is the one place that maps `ModelConfig.arch` to a class."""

from __future__ import annotations

from torch import nn

from tdiag.config import ModelConfig
from tdiag.models.transformer import EncoderDecoder

ARCHITECTURES = {"encoder_decoder": EncoderDecoder}


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int = 0) -> nn.Module:
    """A freshly initialised model of architecture `cfg.arch`."""
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.arch](cfg, src_vocab, tgt_vocab, pad_id)
