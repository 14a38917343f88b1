"""Multi-head attention (Vaswani et al. 2017, section 3.2) with two interchangeable backends.

`manual` writes scaled dot-product attention out (eq. 1) so every step can be read and
inspected; `sdpa` calls `torch.nn.functional.scaled_dot_product_attention`,
which picks fused kernels on GPU. They agree within float32 rounding
(tests/test_attention.py). The backend is chosen by name in one place, `BACKENDS`.

Masks handed to a backend are boolean, True = "may attend" (SDPA's convention).

Fully masked rows: a query whose every key is masked (a source that is all padding, or a
target that starts with a pad) would take a softmax over nothing, 0/0 = NaN. Such rows
are let attend to every key, and their attention output is then set to zero, so the
block contributes only W_O's bias there and no NaN reaches the forward or backward pass.
With right padding and `<go>` at position 0 this never happens; the guard is for safety.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

Backend = Literal["manual", "sdpa"]


def causal_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """(T_q, T_k) boolean, True on and below the diagonal: query t sees keys 0..t.

    Aligned at the top-left corner, as SDPA's `is_causal=True` is, so both backends agree.
    """
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril()


def manual_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool, dropout_p: float
) -> Tensor:
    """softmax(Q K^T / sqrt(d_k)) V, eq. 1; masked scores are set to -inf before the softmax."""
    # q: (B, h, T_q, d_k); k, v: (B, h, T_k, d_k); mask broadcastable to (B, h, T_q, T_k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, T_q, T_k)
    if is_causal:
        mask = causal_mask(q.size(-2), k.size(-2), q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Dropout on the attention weights, as in the annotated transformer and SDPA's dropout_p.
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return weights @ v  # (B, h, T_q, d_k)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool, dropout_p: float
) -> Tensor:
    """PyTorch's fused kernel; `is_causal` without a mask lets it use flash attention on GPU.

    On the CPU, SDPA's own choice (its CPU flash kernel) costs more than its math kernel
    at the short sequences and many small heads of these studies: 17.1 vs 13.9 ms per
    copy-task step, and no faster on the GPT LM (benchmarks/RESULTS.md). So the CPU is
    asked for the math kernel; GPUs keep SDPA's choice of flash / memory-efficient kernels.
    """
    if q.device.type == "cpu":
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


BACKENDS: dict[str, Callable[..., Tensor]] = {"manual": manual_attention, "sdpa": sdpa_attention}


class MultiHeadAttention(nn.Module):
    """h heads of width d_k = d_model / h; projections W_Q, W_K, W_V, W_O, each d x d with bias."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, backend: Backend = "sdpa"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.dropout = dropout
        self.backend = backend
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, d_k={self.d_k}, dropout={self.dropout}, backend={self.backend!r}"

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        causal: bool = False,
    ) -> Tensor:
        """x_q (B, T_q, d) attends over x_kv (B, T_k, d) -> (B, T_q, d).

        key_padding_mask: bool (B, T_k), True where the key is padding and must not be seen.
        causal: query t sees only keys 0..t (decoder self-attention, section 3.2.3).
        """
        b, t_q, d = x_q.shape
        t_k = x_kv.size(1)
        q = self._split_heads(self.w_q(x_q))  # (B, h, T_q, d_k)
        k = self._split_heads(self.w_k(x_kv))  # (B, h, T_k, d_k)
        v = self._split_heads(self.w_v(x_kv))  # (B, h, T_k, d_k)
        attend = BACKENDS[self.backend]
        dropout_p = self.dropout if self.training else 0.0
        if key_padding_mask is None:
            # A causal row always sees key 0, so no row can be empty here.
            out = attend(q, k, v, None, causal, dropout_p)  # (B, h, T_q, d_k)
        else:
            if key_padding_mask.dtype != torch.bool:
                raise TypeError(
                    f"key_padding_mask must be a bool tensor (True = padding), got {key_padding_mask.dtype}"
                )
            allowed = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, T_k)
            if causal:
                allowed = allowed & causal_mask(t_q, t_k, x_q.device)  # (B, 1, T_q, T_k)
            empty = ~allowed.any(dim=-1, keepdim=True)  # (B, 1, 1 or T_q, 1); see module docstring
            out = attend(q, k, v, allowed | empty, False, dropout_p)  # (B, h, T_q, d_k)
            out = out.masked_fill(empty, 0.0)
        out = out.transpose(1, 2).reshape(b, t_q, d)  # (B, T_q, d): heads concatenated
        return self.w_o(out)
