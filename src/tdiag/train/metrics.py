"""What a run measures: sequence and token accuracy, BLEU, and the norms of activations
and gradients that show a training run going wrong."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tdiag.models.lstm import LSTMLanguageModel


def exact_match(predicted: torch.Tensor, target: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Per-row bool: the decoded sequence equals the target, token for token.

    Both are right-padded (B, *) tensors that start with <go>; they are compared over
    the wider of the two widths, so a prediction that stops early or runs on fails.
    """
    width = max(predicted.shape[1], target.shape[1])
    p = F.pad(predicted, (0, width - predicted.shape[1]), value=pad_id)
    t = F.pad(target, (0, width - target.shape[1]), value=pad_id)
    return (p == t).all(dim=1)


def token_counts(logits: torch.Tensor, labels: torch.Tensor, pad_id: int = 0) -> tuple[int, int]:
    """(correct, total) argmax predictions over non-padding label positions."""
    keep = labels != pad_id
    correct = (logits.argmax(dim=-1) == labels) & keep
    return int(correct.sum()), int(keep.sum())


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """A Transformer's blocks by record name: `layer.i` (GPT), `encoder.i` and `decoder.i`
    (encoder-decoder); none for the LSTM, whose layers are not modules of their own."""
    out = {}
    for stack in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(getattr(model, stack, None), "layers", None) or []):
            out[f"{stack}.{i}"] = layer
    for i, layer in enumerate(getattr(model, "layers", None) or []):
        out[f"layer.{i}"] = layer
    return out


def final_layer_norm(model: nn.Module) -> nn.LayerNorm | None:
    """The LayerNorm whose output the output projection reads: the (decoder) stack's final
    norm under pre-LN; under post-LN, which has none (`nn.Identity`), the last block's
    last one. None for a model without LayerNorm (the LSTM)."""
    stack = getattr(model, "decoder", model)
    norm = getattr(stack, "norm", None)
    if isinstance(norm, nn.LayerNorm):
        return norm
    layers = getattr(stack, "layers", None)
    return layers[-1].ffn_res.norm if layers else None


def as_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-dim tensors as floats, with one copy to the host for all of them."""
    if not values:
        return {}
    return dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))


class ActivationNorms:
    """Mean per-token L2 norm of each block's output, captured by forward hooks.

    Growing activation norms are the first visible symptom of a post-LN stack or an
    embedding scale going wrong, so every training step records them: a Transformer's
    blocks (`blocks`), and for the LSTM language model its embedding's output
    (`embedding`) and its LSTM stack's output (`lstm`, the last layer's hidden states:
    the fused `nn.LSTM` runs every layer in one call, so no other layer's output is
    there to hook).

    Only forwards inside `recording()` count (the loop wraps each training micro-batch's
    forward in it), so an evaluation, or a checkpointed block re-run in backward, adds
    nothing; a step's value is the mean over its micro-batches.
    """

    def __init__(self, model: nn.Module):
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._recording = False
        self._handles = [module.register_forward_hook(self._hook(name))
                         for name, module in _activation_points(model).items()]

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            if self._recording:
                hidden = output[0] if isinstance(output, tuple) else output
                norm = hidden.detach().float().norm(dim=-1).mean()
                self._sums[name] = self._sums[name] + norm if name in self._sums else norm
                self._counts[name] = self._counts.get(name, 0) + 1

        return record

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record the norms of the forward passes inside (one training micro-batch's)."""
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def pop(self) -> dict[str, torch.Tensor]:
        """`act_norm/<name>`: each norm's mean over the micro-batches recorded since the
        last call, as 0-dim tensors (see `as_floats`); clears them."""
        out = {f"act_norm/{n}": total / self._counts[n] for n, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _activation_points(model: nn.Module) -> dict[str, nn.Module]:
    if isinstance(model, LSTMLanguageModel):
        return {"embedding": model.embedding, "lstm": model.rnn}
    return blocks(model)


class GradientNorms:
    """The global L2 norm of the gradients, per block the norm of its parameters'
    gradients, and the final LayerNorm's gain.

    `grad_norm` is the norm of every parameter's gradient together, the one clipping
    reads (`clip_grad_norm_`'s). The norm-placement study (Xiong et al. 2020, On Layer
    Normalization in the Transformer Architecture: post-LN's gradients near the output
    are large at initialisation, hence its warm-up) reads, per step and before clipping,
    `grad_norm/<block>` for each block of `blocks` (for the LSTM, each layer's
    `weight_*_l<i>`/`bias_*_l<i>` as `layer.i`), and `final_ln/weight_norm` and
    `final_ln/grad_norm`: the norms of the gain (`weight`) of `final_layer_norm` and of
    its gradient. All from one `_foreach_norm` over every gradient; values stay on the
    device until `as_floats`, so measuring costs no host synchronisation.
    """

    def __init__(self, model: nn.Module):
        groups = _gradient_groups(model)
        self._names = [f"grad_norm/{name}" for name in groups]
        in_blocks = {id(p): i for i, params in enumerate(groups.values()) for p in params}
        self._parameters = list(model.parameters())  # a tied weight once
        device = self._parameters[0].device
        # Each parameter's bucket: its block, or the last one (outside every block).
        self._group = torch.tensor([in_blocks.get(id(p), len(groups)) for p in self._parameters],
                                   dtype=torch.long, device=device)
        self._zero = torch.zeros((), device=device)
        self._final = final_layer_norm(model)

    def measure(self) -> dict[str, torch.Tensor]:
        """The norms of the gradients as they are now (call before clipping), as 0-dim tensors."""
        norms = torch._foreach_norm([self._grad(p) for p in self._parameters])
        squares = torch.stack([n.float() for n in norms]).square()
        out = {"grad_norm": squares.sum().sqrt()}
        by_group = squares.new_zeros(len(self._names) + 1).index_add_(0, self._group, squares).sqrt()
        out.update(zip(self._names, by_group[:-1].unbind()))
        if self._final is not None:
            out["final_ln/weight_norm"] = self._final.weight.detach().float().norm()
            out["final_ln/grad_norm"] = self._grad(self._final.weight).float().norm()
        return out

    def _grad(self, parameter: nn.Parameter) -> torch.Tensor:
        return self._zero if parameter.grad is None else parameter.grad


def _gradient_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    groups = {name: list(block.parameters()) for name, block in blocks(model).items()}
    if isinstance(model, LSTMLanguageModel):
        for name, parameter in model.rnn.named_parameters():  # nn.LSTM's names: weight_ih_l0, ...
            groups.setdefault(f"layer.{name.rsplit('_l', 1)[1]}", []).append(parameter)
    return groups


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU (sacrebleu, 0-100) of whitespace-tokenised texts, and its signature.

    Synthetic tasks are scored on their own tokens (`tokenize="none"`); the signature
    records that, so the number is never mistaken for a detokenized-text BLEU.
    """
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize="none")
    score = metric.corpus_score(hypotheses, [references])
    return float(score.score), str(metric.get_signature())


def text_scores(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, 0-100) of detokenised text, each with its signature.

    BLEU uses sacrebleu's default 13a tokenisation, the WMT convention (Post 2018, A Call
    for Clarity in Reporting BLEU Scores), so the number depends on the text alone and
    not on our tokeniser or BPE; chrF (Popović 2015) scores character n-grams, which
    credits a partly right word that BLEU counts as wrong.
    """
    from sacrebleu.metrics import BLEU, CHRF

    out = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        out[name] = float(metric.corpus_score(hypotheses, [references]).score)
        out[f"{name}_signature"] = str(metric.get_signature())
    return out
