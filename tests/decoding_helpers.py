"""Helpers for the decoding tests: a reference greedy decoder and a spy on attention backends.

`full_recompute_greedy` recomputes the whole target prefix through `EncoderDecoder.decode`
at every step, the plainest way to decode, with no cache to get wrong: the oracle the
package's incremental decoder is tested against, slow, and so kept out of the package.
"""

from __future__ import annotations

import torch

from tdiag.models import attention
from tdiag.models.modes import evaluating


@torch.no_grad()
def full_recompute_greedy(model, src: torch.Tensor, max_len: int, go_id: int, stop_id: int) -> torch.Tensor:
    """Argmax decoding from `<go>`: (B, S) -> (B, L), L <= max_len, `<go>` included.

    Stops once every row has produced `stop_id`; a row's positions after its stop are
    `model.pad_id`. Runs in eval mode (no dropout) and restores the caller's mode.
    """
    with evaluating(model):
        memory = model.encode(src)  # (B, S, d)
        out = torch.full((src.size(0), 1), go_id, dtype=torch.long, device=src.device)  # (B, 1)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (B,)
        for _ in range(max_len - 1):
            logits = model.decode(memory, src, out)[:, -1]  # (B, V)
            step = logits.argmax(dim=-1).masked_fill(done, model.pad_id)  # (B,)
            out = torch.cat([out, step[:, None]], dim=1)  # (B, t + 1)
            done |= step == stop_id
            if bool(done.all()):
                break
        return out


def spy_on_backends(monkeypatch) -> dict[str, int]:
    """Count the calls of each attention backend from now on (undone by `monkeypatch`)."""
    calls = dict.fromkeys(attention.BACKENDS, 0)

    def counting(name, kernel):
        def spy(*args, **kwargs):
            calls[name] += 1
            return kernel(*args, **kwargs)

        return spy

    for name, kernel in list(attention.BACKENDS.items()):
        monkeypatch.setitem(attention.BACKENDS, name, counting(name, kernel))
    return calls
