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

`prepare` is the `data prepare` stage of a language-model dataset: the vocabulary of
the training file, the three splits encoded as id streams, and `meta.json` (last) with
the sizes and a data card saying what the text is and where it came from.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, Mapping

import torch

from tdiag import paths
from tdiag.atomic import write_bytes, write_json
from tdiag.config import LanguageModelTaskConfig
from tdiag.data.fetch import fetched
from tdiag.errors import UserError

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


def _sources(cfg: LanguageModelTaskConfig, root: Path) -> tuple[Path, dict]:
    """The folder holding wiki.{split}.tokens and where its text came from."""
    if cfg.path:
        return root / cfg.path, {"origin": "path", "path": cfg.path}
    return fetched(cfg.corpus, root)


def data_label(source: dict) -> str:
    """How reports must name the text: the offline mirror is a re-split, never plain WikiText-2."""
    if source["origin"] == "path":
        return f"user corpus at {source['path']}"
    return "WikiText-2 (offline re-split)" if source["origin"] == "mirror" else "WikiText-2"


def prepare(name: str, cfg: LanguageModelTaskConfig, root: Path = Path(".")) -> dict:
    """Vocabulary from the training split; every split encoded (and cut to the configured
    token counts) as a LongTensor in `{split}.pt`; `meta.json` written last."""
    folder, source = _sources(cfg, root)
    files = {split: paths.wikitext_tokens(folder, split) for split in paths.SPLITS}
    for split, path in files.items():
        if not path.is_file():
            if cfg.path:
                hint = f"point datasets.{name}.path at a folder holding wiki.{{train,valid,test}}.tokens"
            else:
                hint = f"fetch the corpus again with `tdiag data fetch {cfg.corpus}`"
            raise UserError(f"dataset '{name}': {path} is missing ({split} split); {hint}")
    vocab = Vocabulary.from_file(files["train"])
    limits = {"train": cfg.train_tokens, "valid": cfg.eval_tokens, "test": cfg.eval_tokens}
    full, kept, unk = {}, {}, {}
    for split, path in files.items():
        stream = vocab.encode_file(path)
        full[split] = stream.numel()
        stream = stream[: limits[split]].clone() if limits[split] else stream
        kept[split] = stream.numel()
        unk[split] = round(float((stream == vocab.unk_id).float().mean()), 5) if stream.numel() else 0.0
        # Saved through a buffer: torch.save names the archive inside after the file it
        # writes, so saving to a temporary name would give each prepare different bytes
        # (and DVC a changed output).
        buffer = io.BytesIO()
        torch.save(stream, buffer)
        write_bytes(root / paths.lm_split(name, split), buffer.getvalue())
    vocab.save(root / paths.lm_vocab(name))
    label = data_label(source)
    cut = [f"first {kept[s]:,} of {full[s]:,} {s} tokens" for s in paths.SPLITS if kept[s] < full[s]]
    meta = {
        "name": name,
        "kind": "language_model",
        "config": cfg.model_dump(mode="json"),
        "vocab_size": len(vocab),
        "eos_id": vocab.eos_id,
        "unk_id": vocab.unk_id,
        "tokens": kept,
        "source_tokens": full,
        "unk_rate": unk,
        "card": {
            "label": label,
            "subset": "; ".join(cut),
            "description": label + (f", {'; '.join(cut)}" if cut else ""),
            "source": source,
            "files": {split: str(path) for split, path in files.items()},
        },
    }
    write_json(root / paths.prepared_meta(name), meta)
    print(f"dataset {name}: {meta['card']['description']}; vocabulary {len(vocab):,}; tokens {kept}")
    return meta
