"""A user's own model, named in params.yaml: `model: {arch: custom, factory: "models/my_gpt.py:build"}`.

The contract (README, "Your own model"):

- The factory is called with four keyword arguments, `src_vocab` and `tgt_vocab`
  (vocabulary sizes; equal for a language model), `pad_id` (the padding id of a
  seq2seq dataset; None for a language model, whose segments have no padding) and
  `config` (the validated `ModelConfig` of the run: d_model, max_len, ... and the
  user's own keys under `config.options`). It returns a `torch.nn.Module` with at
  least one parameter. A factory may take `**kwargs` for arguments it does not use.
- Which forward the model must have follows from the dataset the run trains on
  (`DatasetKind.model_family`, data/kinds.py):
  encoder-decoder (synthetic and translation datasets): `model(src, tgt_in)` with src
  (B, S) and tgt_in (B, T) long tensors, padded with `pad_id` (the model builds its own
  masks from it), returns next-token logits (B, T, tgt_vocab);
  decoder-only (language-model datasets): `model(tokens)` with tokens (B, T) returns
  next-token logits (B, T, tgt_vocab); position t may only see tokens 0..t.
  Logits are a floating-point tensor. Sequences reach at most `config.max_len`
  positions (decoding stops there; a language model's continuation slides a window of
  that many tokens).
- Decoding needs nothing more: without a key/value cache, greedy and beam search and
  language-model continuations recompute the whole prefix at every step
  (models/decoding.py).

`check` holds a model to the contract before a run touches any file: built from the
run's config, one forward on two rows of the run's first training batch. Every failure
is one line naming the key (`studies.<study>.runs.<run>.model.factory`), exit code 2.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from tdiag.config import ConfigError, ModelConfig
from tdiag.config import factory as factories

SIGNATURES = {
    "encoder_decoder": ("model(src, tgt_in)", 2),
    "decoder_only": ("model(tokens)", 1),
}
"""Model family -> the call the contract makes, and its number of inputs."""


class CustomModel(nn.Module):
    """The user's module (`net`) with what the pipeline reads of every model: `pad_id`
    and `max_len`. Held inside, not subclassed, so that none of the user's attribute
    names (`layers`, `decoder`) is mistaken for one of this project's blocks by the
    diagnostics (train/metrics.py)."""

    def __init__(self, net: nn.Module, pad_id: int | None, max_len: int):
        super().__init__()
        self.net, self.pad_id, self.max_len = net, pad_id, max_len

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.net(*inputs)


def build(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int | None,
          key: str = "model.factory") -> CustomModel:
    """The model the factory of `cfg` builds, wrapped; a ConfigError naming `key` if the factory fails."""
    factory = factories.load(cfg.factory, cfg.folder, key)
    arguments = {"src_vocab": src_vocab, "tgt_vocab": tgt_vocab, "pad_id": pad_id, "config": cfg}
    try:
        inspect.signature(factory).bind(**arguments)
    except TypeError as err:
        raise ConfigError(
            f"{key}: {cfg.factory} cannot be called as {_name(factory)}(src_vocab=, tgt_vocab=, pad_id=, config=): "
            f"{err}; add the missing parameters, or **kwargs for those it does not use"
        ) from None
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        pass
    try:
        net = factory(**arguments)
    except Exception as err:  # the user's code failed: one line, not its traceback
        raise ConfigError(f"{key}: {cfg.factory} raised {factories.one_line(err)}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{key}: {cfg.factory} returned a {type(net).__name__}, not a torch.nn.Module")
    if not any(True for _ in net.parameters()):
        raise ConfigError(f"{key}: the model {cfg.factory} returned has no parameters to train")
    return CustomModel(net, pad_id, cfg.max_len)


def _name(function) -> str:
    return getattr(function, "__name__", type(function).__name__)


def check(key: str, cfg: ModelConfig, family: str, vocab_sizes: tuple[int, int], pad_id: int | None,
          inputs: tuple[Tensor, ...]) -> None:
    """Build the model and hold one forward on `inputs` (a real batch, as the workload
    feeds it) to the contract of `family` ('encoder_decoder' or 'decoder_only')."""
    with torch.random.fork_rng(devices=[]):  # building draws weights: leave the caller's generator as it was
        _check(key, cfg, family, vocab_sizes, pad_id, inputs)


def _check(key: str, cfg: ModelConfig, family: str, vocab_sizes: tuple[int, int], pad_id: int | None,
           inputs: tuple[Tensor, ...]) -> None:
    call, count = SIGNATURES[family]
    model = build(cfg, *vocab_sizes, pad_id, key).eval()
    try:
        inspect.signature(model.net.forward).bind(*inputs)
    except TypeError as err:
        raise ConfigError(f"{key}: the model's forward cannot be called as {call} ({err}); "
                          f"a model trained on this dataset takes {count} input(s)") from None
    except ValueError:
        pass
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    try:
        with torch.no_grad():
            logits = model(*inputs)
    except Exception as err:
        raise ConfigError(f"{key}: the model's forward {call} on inputs of shape {shapes} raised "
                          f"{factories.one_line(err)}") from None
    if not isinstance(logits, Tensor):
        raise ConfigError(f"{key}: {call} returned a {type(logits).__name__}; it must return one logits tensor (B, T, V)")
    if not logits.is_floating_point():
        raise ConfigError(f"{key}: {call} returned logits of dtype {logits.dtype}; they must be floating point")
    expected = (*inputs[-1].shape, vocab_sizes[1])
    if tuple(logits.shape) != expected:
        raise ConfigError(f"{key}: {call} on inputs of shape {shapes} returned logits of shape "
                          f"{tuple(logits.shape)}; expected (B, T, V) = {expected}")
