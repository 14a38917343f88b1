"""Word-level language-model data for WikiText-style token files (`wiki.train.tokens`, ...).

Tokenisation follows PyTorch's word_language_model example (`data.py`): every line,
blank ones included, contributes its whitespace-separated words followed by `<eos>`.
Blank lines (and WikiText's `= Heading =` lines) are kept so the streams, and hence
the perplexities, are comparable with that example and the published numbers built on it.
`<unk>` is already applied in WikiText; words that are missing from the training
vocabulary (possible in other splits or other corpora) map to `<unk>`.

The stream is cut into `batch_size` contiguous rows (`batchify`), and read in segments
of `bptt` steps (`segment`): row b of every segment continues row b of the previous
one, so an LSTM's state can carry across segments (truncated BPTT, Zaremba et al. 2014).
Everything is a pure function of the tensors; the data position is just the segment index.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, Mapping

import torch

from tdiag.atomic import write_json

EOS = "<eos>"
UNK = "<unk>"


def _words(path: str | Path) -> Iterator[str]:
    """Every word of the file, each line's words followed by EOS (blank lines give a lone EOS)."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            yield from line.split()
            yield EOS


@dataclass(frozen=True)
class Vocabulary:
    """Tokens in id order; `index` maps a token to its id. Both are read-only."""

    tokens: tuple[str, ...]
    index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        index = {token: i for i, token in enumerate(tokens)}
        if len(index) != len(tokens):
            raise ValueError("vocabulary tokens must be distinct")
        missing = [t for t in (EOS, UNK) if t not in index]
        if missing:
            raise ValueError(f"vocabulary lacks {', '.join(missing)}")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "index", MappingProxyType(index))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    @property
    def eos_id(self) -> int:
        return self.index[EOS]

    @classmethod
    def from_file(cls, path: str | Path) -> "Vocabulary":
        """Every distinct word of the training split in first-seen order, `<eos>` included;
        `<unk>` is appended when the file has none, so other splits can always be encoded."""
        seen = dict.fromkeys(_words(path))
        seen.setdefault(UNK)
        return cls(tuple(seen))

    def encode_file(self, path: str | Path) -> torch.Tensor:
        """The file as one LongTensor stream of ids (N,); unknown words become `<unk>`."""
        unk, index = self.unk_id, self.index
        return torch.tensor([index.get(word, unk) for word in _words(path)], dtype=torch.long)

    def save(self, path: str | Path) -> None:
        write_json(path, {"tokens": list(self.tokens)})

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("tokens"), list):
            raise ValueError(f"{path}: not a vocabulary file (expected a JSON object with a 'tokens' list)")
        try:
            return cls(tuple(record["tokens"]))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) -> (batch_size, N // batch_size): row b is the b-th contiguous chunk of the
    stream. The last N % batch_size tokens are dropped."""
    if stream.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream, got shape {tuple(stream.shape)}")
    n_steps = stream.numel() // batch_size
    if n_steps < 2:
        raise ValueError(
            f"a stream of {stream.numel()} tokens gives fewer than 2 steps per row at batch_size {batch_size}; "
            "use a smaller batch_size"
        )
    return stream[: n_steps * batch_size].view(batch_size, n_steps)


def n_segments(data: torch.Tensor, bptt: int) -> int:
    """How many segments `data` (B, n_steps) holds; segment i starts at step i * bptt."""
    return math.ceil((data.size(1) - 1) / bptt)


def segment(data: torch.Tensor, start: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs data[:, start : start + L] and targets one step later, both (B, L).

    L = min(bptt, n_steps - 1 - start): the last segment is shorter, since the final
    step has no next token to predict.
    """
    last = data.size(1) - 1
    if not 0 <= start < last:
        raise ValueError(f"segment start {start} is outside 0..{last - 1} for data of {data.size(1)} steps")
    length = min(bptt, last - start)
    return data[:, start : start + length], data[:, start + 1 : start + 1 + length]
