"""Multi-head attention (Vaswani et al. 2017, section 3.2) with two interchangeable backends.

`manual` writes scaled dot-product attention out (eq. 1) so every step can be read and
inspected; `sdpa` calls `torch.nn.functional.scaled_dot_product_attention`,
which picks fused kernels on GPU. They agree within float32 rounding
(tests/test_attention.py). The backend is chosen by name in one place, `BACKENDS`, and
`MultiHeadAttention` is the only caller: the model config's `attention` names the
backend of every block, and the same blocks run training, teacher-forced evaluation and
incremental decoding, so the configured kernel is the one used everywhere.

Incremental decoding passes a `KVCache` to `MultiHeadAttention.forward`: a
self-attention block appends the new position's keys and values to it and attends over
all positions so far; a cross-attention block reads the encoder memory's keys and values
from it, projected once (`MultiHeadAttention.memory_cache`). Without a cache the forward
pass is the training one, unchanged.

Masks handed to a backend are boolean, True = "may attend" (SDPA's convention).

Fully masked rows: a query whose every key is masked (a source that is all padding, or a
target that starts with a pad) would take a softmax over nothing, 0/0 = NaN. Such rows
are let attend to every key, and their attention output is then set to zero, so the
block contributes only W_O's bias there and no NaN reaches the forward or backward pass.
With right padding and `<go>` at position 0 this never happens; the guard is for safety."""

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
    """PyTorch's fused kernel; `is_causal` without a mask lets it use flash attention.

    On the CPU, SDPA's flash kernel pays off only in float32 without a mask: one thread,
    forward and backward, causal, the flash kernel took 0.37-3.80 ms against the math
    kernel's 0.76-5.36 ms from 16 to 512 tokens (512 tokens per call, 2 heads of 32) and
    keeps no T x T weights for backward (the lab's attention grid); in bfloat16 (autocast)
    it was 2-4.6x slower at 30-64 tokens, and with a padding mask it cost more than the
    math kernel at the copy task's sizes (17.1 vs 13.9 ms per step), benchmarks/RESULTS.md.
    So the CPU keeps SDPA's own choice for an unmasked float32 call (the GPT's blocks, a
    decoder's self-attention in fp32) and is sent to the math kernel otherwise; with
    dropout SDPA itself falls back to the math kernel. GPUs keep SDPA's choice throughout.
    """
    if q.device.type == "cpu" and (mask is not None or q.dtype != torch.float32):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


BACKENDS: dict[str, Callable[..., Tensor]] = {"manual": manual_attention, "sdpa": sdpa_attention}


class KVCache:
    """The keys and values one `MultiHeadAttention` block has seen, kept between decoding steps.

    A self-attention cache grows: each call writes the new positions' keys and values in
    place into buffers of `steps` positions, so a step costs its own projections only. A
    memory cache (`fixed`) holds the encoder memory's keys and values for cross-attention,
    projected once. `reorder` and `keep` move and drop rows (beam search).
    """

    def __init__(self, steps: int):
        self.steps = steps
        self.fixed = False
        self.length = 0  # positions held
        self.k: Optional[Tensor] = None  # (N, h, steps, d_k) once the first position arrives
        self.v: Optional[Tensor] = None

    @classmethod
    def of_memory(cls, k: Tensor, v: Tensor) -> "KVCache":
        """A fixed cache of projected memory keys and values, (N, h, S, d_k) each."""
        cache = cls(k.size(2))
        cache.k, cache.v, cache.length, cache.fixed = k, v, k.size(2), True
        return cache

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new positions' keys and values (N, h, T, d_k) -> those of every position so far."""
        if self.fixed:
            raise ValueError("a memory cache is fixed: its keys and values were projected once")
        end = self.length + k.size(2)
        if end > self.steps:
            raise ValueError(f"decoding past the {self.steps} positions this cache was made for")
        if self.k is None:
            shape = (k.size(0), k.size(1), self.steps, k.size(3))
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (N, h, T_so_far, d_k)

    def reorder(self, parents: Tensor) -> None:
        """Row r continues the decode of row parents[r]; only rows whose parent is another row move."""
        moved = (parents != torch.arange(len(parents), device=parents.device)).nonzero()[:, 0]
        if len(moved) and self.k is not None:
            t = self.length
            self.k[moved, :, :t] = self.k[parents[moved], :, :t]
            self.v[moved, :, :t] = self.v[parents[moved], :, :t]

    def keep(self, rows: Tensor) -> None:
        """Drop every row but `rows` (decodes that have ended leave the batch)."""
        if self.k is None:
            return
        if self.fixed:
            self.k, self.v = self.k[rows], self.v[rows]
            return
        self.k, self.v = self._rows(self.k, rows), self._rows(self.v, rows)

    def _rows(self, buffer: Tensor, rows: Tensor) -> Tensor:
        """`buffer[rows]`, copying only the positions held so far."""
        out = buffer.new_empty((len(rows), *buffer.shape[1:]))
        out[:, :, : self.length] = buffer[rows, :, : self.length]
        return out


PROJECTIONS = ("w_q", "w_k", "w_v")
"""The parts of `PackedProjection`, in the order its rows hold them."""


class PackedProjection(nn.Module):
    """W_Q, W_K and W_V of one attention block (each d x d with bias) packed as the rows of
    one (3d, d) weight and one (3d,) bias, so self-attention projects its queries, keys
    and values with one matrix product (as torch.nn.MultiheadAttention's `in_proj_weight`).

    The three stay three projections: `part(name)` is a view of one of them, initialised
    and tied at init one by one (models/init.py), and an element-wise optimizer trains
    the rows of each apart, exactly as it would three separate parameters. Cross-attention
    takes W_Q's rows for the queries and W_K and W_V's for the memory.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.bias = nn.Parameter(torch.empty(3 * d_model))
        for name in PROJECTIONS:  # nn.Linear's default, per part; models/init.py sets the scheme
            weight, bias = self.part(name)
            with torch.no_grad():
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                nn.init.uniform_(bias, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, parts={', '.join(PROJECTIONS)}"

    def part(self, name: str) -> tuple[Tensor, Tensor]:
        """The (d, d) weight and (d,) bias of one projection: views into the packed parameters."""
        rows = slice(PROJECTIONS.index(name) * self.d_model, (PROJECTIONS.index(name) + 1) * self.d_model)
        return self.weight[rows], self.bias[rows]

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> its queries, keys and values side by side (B, T, 3d)."""
        return F.linear(x, self.weight, self.bias)

    def queries(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> its queries (B, T, d)."""
        return F.linear(x, *self.part("w_q"))

    def keys_values(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> its keys and values side by side (B, T, 2d)."""
        return F.linear(x, self.weight[self.d_model :], self.bias[self.d_model :])


class MultiHeadAttention(nn.Module):
    """h heads of width d_k = d_model / h; projections W_Q, W_K, W_V (packed in `w_qkv`,
    see `PackedProjection`) and W_O, each d x d with bias."""

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
        self.w_qkv = PackedProjection(d_model)
        self.w_o = nn.Linear(d_model, d_model)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, d_k={self.d_k}, dropout={self.dropout}, backend={self.backend!r}"

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    def _keys_values(self, x_kv: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.w_qkv.keys_values(x_kv).chunk(2, dim=-1)
        return self._split_heads(k), self._split_heads(v)  # (B, h, T_k, d_k) each

    def memory_cache(self, memory: Tensor) -> KVCache:
        """The keys and values of `memory` (N, S, d), projected once for cross-attention
        over it at every decoding step."""
        return KVCache.of_memory(*self._keys_values(memory))

    def forward(
        self,
        x_q: Tensor,
        x_kv: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        causal: bool = False,
        cache: Optional[KVCache] = None,
    ) -> Tensor:
        """x_q (B, T_q, d) attends over x_kv (B, T_k, d) -> (B, T_q, d).

        key_padding_mask: bool (B, T_k), True where the key is padding and must not be seen.
        causal: query t sees only keys 0..t (decoder self-attention, section 3.2.3).
        cache: for incremental decoding. A growing cache takes x_kv's keys and values and
        attends over every position it holds; with `causal`, x_q is then either the whole
        prefix into an empty cache or one new position, which may see every cached key. A
        fixed (memory) cache supplies the keys and values, and x_kv is not read.
        Self-attention (`x_kv is x_q`) projects queries, keys and values in one product.
        """
        b, t_q, d = x_q.shape
        if x_kv is x_q and not (cache is not None and cache.fixed):
            q, k, v = (self._split_heads(part) for part in self.w_qkv(x_q).chunk(3, dim=-1))
        else:
            q = self._split_heads(self.w_qkv.queries(x_q))  # (B, h, T_q, d_k)
            if cache is not None and cache.fixed:
                k, v = cache.k, cache.v  # (B, h, T_k, d_k), projected once
            else:
                k, v = self._keys_values(x_kv)  # (B, h, T_k, d_k)
        if cache is not None and not cache.fixed:
            k, v = cache.append(k, v)  # (B, h, T_k, d_k): every position so far
        t_k = k.size(2)
        if causal and cache is not None and t_q < t_k:
            if t_q > 1:
                raise ValueError(
                    f"cached causal attention takes one new position per call once keys are cached (got {t_q})"
                )
            causal = False  # the newest position sees every key: no mask needed
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
