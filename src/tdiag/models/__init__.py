"""Model construction: `build_model` is the one place that maps `ModelConfig.arch` to a class."""

from __future__ import annotations

from torch import nn

from tdiag.config import ModelConfig
from tdiag.models import custom
from tdiag.models.gpt import GPT
from tdiag.models.lstm import LSTMLanguageModel
from tdiag.models.transformer import EncoderDecoder

ARCHITECTURES = {
    "encoder_decoder": lambda cfg, src_vocab, tgt_vocab, pad_id: EncoderDecoder(cfg, src_vocab, tgt_vocab, pad_id),
    "gpt": lambda cfg, src_vocab, tgt_vocab, pad_id: GPT(cfg, tgt_vocab),
    "lstm": lambda cfg, src_vocab, tgt_vocab, pad_id: LSTMLanguageModel(cfg, tgt_vocab),
    "custom": lambda cfg, src_vocab, tgt_vocab, pad_id: custom.build(cfg, src_vocab, tgt_vocab, pad_id),
}


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int | None = 0) -> nn.Module:
    """A freshly initialised model of architecture `cfg.arch`.

    The language models ('gpt', 'lstm') predict the next token of one stream: their
    vocabulary is `tgt_vocab`, and `src_vocab` and `pad_id` are not used (LM segments
    are dense, with no padding). 'custom' hands all three to the user's factory
    (models/custom.py).
    """
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[cfg.arch](cfg, src_vocab, tgt_vocab, pad_id)
