"""What a run measures: sequence and token accuracy, and activation norms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


class ActivationNorms:
    """Mean per-token L2 norm of each layer's output, captured by forward hooks.

    Growing activation norms are the first visible symptom of a post-LN stack or an
    embedding scale going wrong, so every training step records them.
    """

    def __init__(self, model: nn.Module):
        self._values: dict[str, torch.Tensor] = {}
        self._handles = []
        stacks = {"encoder": getattr(model, "encoder", None), "decoder": getattr(model, "decoder", None), "": model}
        for stack, module in stacks.items():
            for i, layer in enumerate(getattr(module, "layers", None) or []):
                name = f"{stack}.{i}" if stack else f"layer.{i}"
                self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            if torch.is_grad_enabled():
                hidden = output[0] if isinstance(output, tuple) else output
                self._values[name] = hidden.detach().float().norm(dim=-1).mean()

        return record

    def pop(self) -> dict[str, float]:
        """The norms of the last forward pass, as floats; clears them."""
        if not self._values:
            return {}
        names = list(self._values)
        values = torch.stack([self._values[n] for n in names]).tolist()
        self._values.clear()
        return {f"act_norm/{n}": v for n, v in zip(names, values)}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


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
