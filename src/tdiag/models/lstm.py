"""LSTM language model (Hochreiter & Schmidhuber 1997; the recipe of Zaremba et al. 2014).

Two interchangeable LSTM implementations, chosen by `cfg.lstm_impl`:

- 'fused': `nn.LSTM`, which runs cuDNN on GPU.
- 'scratch': `LSTMScratch`, the gate equations written out one time step at a time so
  each can be read. It keeps `nn.LSTM`'s parameter layout and state-dict key names, so
  the two load each other's weights and agree within float32 rounding
  (tests/test_lstm.py).

The gates, with PyTorch's layout (weight_ih is (4H, I) in the order i, f, g, o):

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)    input gate
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)    forget gate
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)       candidate cell
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)    output gate
    c' = f * c + i * g,   h' = o * tanh(c')

Initialisation, as in PyTorch's word_language_model example: embedding and output
weights ~ U(-0.1, 0.1), output bias 0; LSTM weights keep `nn.LSTM`'s default
U(-1/sqrt(H), 1/sqrt(H)), which `LSTMScratch` reproduces. `cfg.init` (a Transformer
scheme) is not used by this family.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdiag.config import ModelConfig
from tdiag.models.vocabulary_head import VocabularyHead

State = tuple[Tensor, Tensor]
"""(h, c): each (num_layers, B, H) for a stack, (B, H) for one cell."""

EMBEDDING_INIT_RANGE = 0.1
PARAMETER_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
"""Per layer, as nn.LSTM names them (with a `_l<layer>` suffix in a stack)."""


def lstm_step(x_gates: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor, bias_hh: Tensor) -> State:
    """One time step. x_gates (B, 4H) is the input's share W_ih x + b_ih; h, c (B, H)."""
    gates = x_gates + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # each (B, H)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def _lstm_parameters(module: nn.Module, input_size: int, hidden_size: int, suffix: str) -> None:
    """Register weight_ih, weight_hh, bias_ih, bias_hh (+ suffix) with nn.LSTM's shapes and init."""
    bound = 1.0 / math.sqrt(hidden_size)
    shapes = ((4 * hidden_size, input_size), (4 * hidden_size, hidden_size), (4 * hidden_size,), (4 * hidden_size,))
    for name, shape in zip(PARAMETER_NAMES, shapes):
        module.register_parameter(name + suffix, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))


class LSTMCellScratch(nn.Module):
    """One LSTM cell, `nn.LSTMCell`'s interface: forward(x (B, I), (h, c) or None) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        _lstm_parameters(self, input_size, hidden_size, "")

    def forward(self, x: Tensor, state: Optional[State] = None) -> State:
        if state is None:
            zeros = x.new_zeros(x.size(0), self.hidden_size)
            state = (zeros, zeros)
        return lstm_step(F.linear(x, self.weight_ih, self.bias_ih), *state, self.weight_hh, self.bias_hh)


class LSTMScratch(nn.Module):
    """A stack of LSTM layers, `nn.LSTM(batch_first=True)`'s interface and state-dict keys.

    forward(x (B, T, I), (h0, c0) or None) -> (output (B, T, H), (h_n, c_n)), where h0,
    c0, h_n, c_n are (num_layers, B, H) and `output` is the last layer's h at every step.
    Dropout is applied to every layer's output except the last, as nn.LSTM does.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        for layer in range(num_layers):
            _lstm_parameters(self, input_size if layer == 0 else hidden_size, hidden_size, f"_l{layer}")

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, dropout={self.dropout}"

    def forward(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.size(0), self.hidden_size)
            state = (zeros, zeros)
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0:
                x = F.dropout(x, self.dropout, self.training)
            w_ih, w_hh, b_ih, b_hh = (getattr(self, f"{name}_l{layer}") for name in PARAMETER_NAMES)
            # The input's share of the gates does not depend on h: one matmul for all steps.
            x_gates = F.linear(x, w_ih, b_ih)  # (B, T, 4H)
            h, c = state[0][layer], state[1][layer]  # (B, H)
            outputs = []
            for t in range(x.size(1)):
                h, c = lstm_step(x_gates[:, t], h, c, w_hh, b_hh)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)  # (B, T, H)
            h_n.append(h)
            c_n.append(c)
        return x, (torch.stack(h_n), torch.stack(c_n))


class LSTMLanguageModel(nn.Module):
    """embedding (d_model) -> dropout -> LSTM (n_layers, hidden_size) -> dropout -> Linear to vocab.

    forward(tokens (B, T), state or None) -> (logits (B, T, V), state); with `targets`,
    (summed cross-entropy, state). Passing the
    returned state to the next contiguous segment continues the streams; detach it
    between segments for truncated backpropagation through time.

    There is no `layers` attribute: the fused nn.LSTM exposes no per-layer module to
    hook, so the activation norms recorded for this family are the embedding's output
    and the stack's (train/metrics.py).
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.hidden_size = cfg.hidden_size or cfg.d_model
        self.num_layers = cfg.n_layers
        self.embedding = nn.Embedding(vocab_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        # nn.LSTM applies dropout only between layers, and warns when that is none.
        between = cfg.dropout if cfg.n_layers > 1 else 0.0
        if cfg.lstm_impl == "fused":
            self.rnn = nn.LSTM(cfg.d_model, self.hidden_size, cfg.n_layers, dropout=between, batch_first=True)
        elif cfg.lstm_impl == "scratch":
            self.rnn = LSTMScratch(cfg.d_model, self.hidden_size, cfg.n_layers, dropout=between)
        else:
            raise ValueError(f"unknown lstm_impl {cfg.lstm_impl!r}; allowed: fused, scratch")
        self.output = VocabularyHead(self.hidden_size, vocab_size)
        nn.init.uniform_(self.embedding.weight, -EMBEDDING_INIT_RANGE, EMBEDDING_INIT_RANGE)
        nn.init.uniform_(self.output.weight, -EMBEDDING_INIT_RANGE, EMBEDDING_INIT_RANGE)
        nn.init.zeros_(self.output.bias)
        if cfg.tie_embeddings:
            # Press & Wolf 2017; config validation guarantees hidden_size == d_model.
            self.output.weight = self.embedding.weight

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero (h, c), each (n_layers, batch_size, hidden_size), in the model's dtype."""
        zeros = torch.zeros(
            self.num_layers, batch_size, self.hidden_size, device=device, dtype=self.output.weight.dtype
        )
        return zeros, zeros.clone()

    def forward(
        self, tokens: Tensor, state: Optional[State] = None, targets: Optional[Tensor] = None,
        label_smoothing: float = 0.0,
    ) -> tuple[Tensor, State]:
        """With `targets` (B, T), the summed token cross-entropy takes the logits' place
        (`VocabularyHead.summed_cross_entropy`, which on the CPU never builds them)."""
        x = self.dropout(self.embedding(tokens))  # (B, T, d)
        x, state = self.rnn(x, state)  # (B, T, H); state: 2 x (L, B, H)
        x = self.dropout(x)
        if targets is None:
            return self.output(x), state  # (B, T, V)
        return self.output.summed_cross_entropy(x, targets, label_smoothing), state
