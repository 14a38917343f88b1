"""Both workloads implement the `Workload` protocol the training loop is written against."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from tdiag import paths
from tdiag.config import LanguageModelTaskConfig, SymbolTaskConfig, TrainConfig
from tdiag.data import language_model, synthetic
from tdiag.train import checkpoint, loop
from tdiag.train.language_model_workload import LanguageModelWorkload
from tdiag.train.seq2seq_workload import Seq2SeqWorkload
from tdiag.train.workload import StepBatch, Workload


def _seq2seq(root: Path) -> Seq2SeqWorkload:
    meta = synthetic.write_dataset("copy", SymbolTaskConfig(n_train=20, n_valid=4, n_test=4), root)
    return Seq2SeqWorkload(root / paths.synthetic_dir("copy"), meta, TrainConfig(batch_size=4), torch.device("cpu"))


def _language_model(root: Path) -> LanguageModelWorkload:
    corpus = root / "corpus"
    corpus.mkdir()
    for split in paths.SPLITS:
        (corpus / f"wiki.{split}.tokens").write_text(" the cat sat on the mat . \n" * 60, encoding="utf-8")
    meta = language_model.prepare("mini", LanguageModelTaskConfig(path=str(corpus)), root)
    train = TrainConfig(bptt=8, batch_size=4)
    return LanguageModelWorkload(root / paths.prepared_dir("mini"), meta, train, torch.device("cpu"))


BUILDERS = {"seq2seq": _seq2seq, "language_model": _language_model}


def _protocol_methods() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(Workload).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def test_the_protocol_declares_what_the_loop_uses():
    """The loop, and the checkpoint restore it calls (which restores the workload's state)."""
    declared = set(_protocol_methods()) | set(Workload.__annotations__) | {"vocab_sizes"}
    source = inspect.getsource(loop) + inspect.getsource(checkpoint)
    used = set(re.findall(r"\bworkload\.(\w+)", source))
    assert used == declared


@pytest.mark.parametrize("kind", BUILDERS)
def test_workload_satisfies_the_protocol(tmp_path: Path, kind: str):
    workload = BUILDERS[kind](tmp_path)
    assert isinstance(workload, Workload)  # every declared attribute and method is present
    for name, declared in _protocol_methods().items():
        # The loop's calls bind to the class's method: same positional parameters (by
        # name, in order); anything the class adds has a default.
        params = list(inspect.signature(getattr(type(workload), name)).parameters.values())
        wanted = list(declared.parameters)
        assert [p.name for p in params[: len(wanted)]] == wanted, f"{type(workload).__name__}.{name}"
        assert all(p.default is not p.empty for p in params[len(wanted) :]), f"{type(workload).__name__}.{name}"
    batch = workload.train_batch(1, 0)
    assert isinstance(batch, StepBatch) and batch.micro and batch.n_tokens > 0
    assert len(workload.vocab_sizes) == 2 and workload.steps_per_epoch >= 1
    assert workload.eval_splits[0] == "valid" and workload.best[1] in ("max", "min")


@pytest.mark.parametrize("kind", BUILDERS)
def test_evaluation_records_no_autograd_graph(tmp_path: Path, kind: str):
    """Held-out scoring has no backward: a forward under grad would keep every activation."""
    from tdiag.config import ModelConfig
    from tdiag.models import build_model

    workload = BUILDERS[kind](tmp_path)
    arch = {"seq2seq": dict(arch="encoder_decoder", n_encoder_layers=1, n_decoder_layers=1),
            "language_model": dict(arch="gpt", n_layers=1)}[kind]
    model = build_model(ModelConfig(d_model=16, n_heads=2, d_ff=32, max_len=64, **arch), *workload.vocab_sizes,
                        workload.pad_id)
    grad_on = []
    model.register_forward_hook(lambda module, args, out: grad_on.append(torch.is_grad_enabled()))
    workload.evaluate(model, "valid")
    assert grad_on and not any(grad_on)
