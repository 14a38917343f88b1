"""Named initialisation schemes (`InitConfig`), applied once to a freshly built model.

Baseline, as in the annotated transformer's reading of Vaswani et al. 2017: every Linear
gets Xavier-uniform weights (Glorot & Bengio 2010) and zero biases, and so does each of
W_Q, W_K and W_V, as the d x d projection it is, though an attention block packs them
into one parameter (`PackedProjection`); LayerNorm keeps its unit gain and zero shift.

The options:

- `embedding_std`: token embeddings ~ N(0, s^2) with s = 1 ('one') or 1/sqrt(d_model)
  ('inv_sqrt_d'). The forward pass does NOT multiply embeddings by sqrt(d_model) as
  section 3.4 does; this option sets the input scale instead. 'one' gives the scale the
  paper reaches with N(0, 1/d_model) embeddings times sqrt(d_model).
- `position_std_ratio`: learned position embeddings ~ N(0, (ratio * s)^2), so the ratio
  sets how loud position is against content. Sinusoidal positions (section 3.5) are
  fixed and not touched.
- `tie`: which projections of every attention block start equal, weight and bias:
  'none'; 'qk', W_K starts as a copy of W_Q; 'qkv', W_K and W_V both start as copies of
  W_Q. With W_K = W_Q the initial scores x W W^T y^T come from a positive semi-definite
  form, so a token starts out favouring keys like itself (cf. the mimetic
  initialisation of Trockman & Kolter 2023). The copies are separate rows of the packed
  parameter and train apart, as separate parameters would under an element-wise
  optimizer. These are the tying combinations the toy study's reference compared.
- `zero_wo`: W_O weight and bias start at zero, so every attention sublayer adds nothing
  to the residual stream at step 0 (in the spirit of Fixup, Zhang et al. 2019, and
  ReZero, Bachlechner et al. 2020).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from tdiag.config import InitConfig
from tdiag.models.attention import PROJECTIONS, MultiHeadAttention, PackedProjection

TOKEN_STD: dict[str, Callable[[int], float]] = {
    "one": lambda d_model: 1.0,
    "inv_sqrt_d": lambda d_model: d_model**-0.5,
}

TIED: dict[str, tuple[str, ...]] = {"none": (), "qk": ("w_k",), "qkv": ("w_k", "w_v")}
"""`tie` -> the projections (`PackedProjection` parts) that start as copies of W_Q."""


def init_weights(
    model: nn.Module,
    init: InitConfig,
    d_model: int,
    tokens: Iterable[nn.Embedding],
    positions: Iterable[nn.Embedding],
) -> None:
    """Initialise `model` in place.

    Linear layers and attention blocks are found by type; the model names its token and
    learned-position tables, since both are plain `nn.Embedding`s.
    """
    with torch.no_grad():
        for module in model.modules():
            weights = []
            if isinstance(module, nn.Linear):
                weights = [(module.weight, module.bias)]
            elif isinstance(module, PackedProjection):  # W_Q, W_K, W_V in turn, each d x d
                weights = [module.part(name) for name in PROJECTIONS]
            for weight, bias in weights:
                nn.init.xavier_uniform_(weight)
                if bias is not None:
                    nn.init.zeros_(bias)
    token_std = TOKEN_STD[init.embedding_std](d_model)
    for table in tokens:
        nn.init.normal_(table.weight, std=token_std)
    for table in positions:
        nn.init.normal_(table.weight, std=init.position_std_ratio * token_std)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, MultiHeadAttention):
                continue
            w_q, b_q = module.w_qkv.part("w_q")
            for name in TIED[init.tie]:
                weight, bias = module.w_qkv.part(name)
                weight.copy_(w_q)
                bias.copy_(b_q)
            if init.zero_wo:
                module.w_o.weight.zero_()
                module.w_o.bias.zero_()
