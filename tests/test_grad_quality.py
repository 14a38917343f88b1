"""The accumulated gradient against the full-batch gradient (train/grad_quality.py):
equal in fp32 for any number of micro-batches, for both workloads, measured with
dropout off and without touching the training state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tdiag import paths
from tdiag.config import LanguageModelTaskConfig, ModelConfig, SymbolTaskConfig, TrainConfig
from tdiag.data import language_model, synthetic
from tdiag.models import build_model
from tdiag.train import grad_quality
from tdiag.train.language_model_workload import LanguageModelWorkload
from tdiag.train.seq2seq_workload import Seq2SeqWorkload

CPU = torch.device("cpu")
SMALL = dict(d_model=16, n_heads=2, d_ff=32, max_len=16)


def gpt_on_language_model(root: Path, micro_batches: int, dropout: float = 0.0):
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    for split in paths.SPLITS:
        text = " the cat sat on the mat . \n a dog ran to the big tree . \n" * 40
        (corpus / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    meta = language_model.prepare("mini", LanguageModelTaskConfig(path=str(corpus)), root)
    train = TrainConfig(bptt=8, batch_size=8, micro_batches=micro_batches)
    workload = LanguageModelWorkload(root / paths.prepared_dir("mini"), meta, train, CPU)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt", n_layers=2, dropout=dropout, **SMALL), *workload.vocab_sizes)
    return model, workload, train


def encoder_decoder_on_copy(root: Path, micro_batches: int, dropout: float = 0.0):
    task = SymbolTaskConfig(task="reverse", n_train=40, n_valid=4, n_test=4, content_length=5)
    meta = synthetic.write_dataset("reverse", task, root)
    train = TrainConfig(batch_size=8, micro_batches=micro_batches)
    workload = Seq2SeqWorkload(root / paths.synthetic_dir("reverse"), meta, train, CPU)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="encoder_decoder", dropout=dropout, **SMALL), *workload.vocab_sizes,
                        workload.pad_id)
    return model, workload, train


SETUPS = {"gpt-lm": gpt_on_language_model, "encoder_decoder-seq2seq": encoder_decoder_on_copy}


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("micro_batches", [1, 2, 4, 8])
def test_accumulated_gradient_equals_the_full_batch_gradient_in_fp32(tmp_path: Path, setup: str, micro_batches: int):
    model, workload, train = SETUPS[setup](tmp_path, micro_batches)
    batch = workload.train_batch(3, train.seed)
    assert len(batch.micro) == micro_batches
    result = grad_quality.measure(model.train(), workload, 3, train, CPU)
    assert result["grad_cosine"] > 1 - 1e-6
    assert result["grad_rel_diff"] < 1e-5


@pytest.mark.parametrize("setup", SETUPS)
def test_measuring_leaves_the_training_state_as_it_was(tmp_path: Path, setup: str):
    model, workload, train = SETUPS[setup](tmp_path, 2, dropout=0.5)
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    carried, rng = workload.state_dict(), torch.get_rng_state()
    first = grad_quality.measure(model, workload, 1, train, CPU)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and workload.state_dict() == carried
    # Dropout (p = 0.5) is off for both passes: with it, the masks would differ between
    # the two and between calls.
    assert first["grad_cosine"] > 1 - 1e-6
    assert grad_quality.measure(model, workload, 1, train, CPU) == first
