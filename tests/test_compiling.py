"""`train.compile`: compiled training gives the eager losses and measures, for every model
and both attention backends (traced with the `aot_eager` backend, which runs torch.compile's
capture and autograd without generating code), and a real run compiles with TorchInductor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tdiag, tiny_params
from test_lm_workload import GPT_RUN, lm_project, records
from tdiag import config, paths
from tdiag.config import ConfigError, ModelConfig, TrainConfig
from tdiag.models import build_model
from tdiag.train.compiling import compiled
from tdiag.train.loop import Watch, train_step
from tdiag.train.optim import build_optimizer
from tdiag.train.workload import StepBatch

PAD, VOCAB = 0, 11
CPU = torch.device("cpu")


class RandomPairs:
    """Seq2seq micro-batches of random tokens, right-padded, a new length every step
    (as length-padded batches are), two micro-batches per step."""

    def train_batch(self, step: int, seed: int) -> StepBatch:
        g = torch.Generator().manual_seed(step)
        length = 5 + step % 3
        src = torch.randint(3, VOCAB, (8, length), generator=g)
        src[:3, -2:] = PAD
        micro = [(src[:4], src[:4]), (src[4:], src[4:])]
        n_tokens = int((src[:, 1:] != PAD).sum())
        return StepBatch(micro, n_tokens, {"tokens": n_tokens}, whole=(src, src))

    def loss(self, model, micro, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        src, tgt = (t.to(next(model.parameters()).device) for t in micro)
        logits = model(src, tgt[:, :-1])
        return F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=PAD, reduction="sum") / n_tokens


class RandomSegments:
    def train_batch(self, step: int, seed: int) -> StepBatch:
        tokens = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(step))
        micro = (tokens[:, :-1], tokens[:, 1:])
        return StepBatch([micro], micro[0].numel(), {"tokens": micro[0].numel()}, whole=micro)

    def loss(self, model, micro, n_tokens: int, label_smoothing: float) -> torch.Tensor:
        inputs, targets = (t.to(next(model.parameters()).device) for t in micro)
        logits = model(inputs)
        logits = logits[0] if isinstance(logits, tuple) else logits  # the LSTM's (logits, state)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / n_tokens


MODELS = {
    "encoder_decoder-manual": ModelConfig(d_model=16, n_heads=2, d_ff=32, attention="manual", dropout=0.0),
    "encoder_decoder-sdpa": ModelConfig(d_model=16, n_heads=2, d_ff=32, attention="sdpa", dropout=0.0),
    "gpt-manual": ModelConfig(arch="gpt", d_model=16, n_layers=2, n_heads=2, d_ff=32, attention="manual",
                              dropout=0.0, checkpointing="blocks"),
    "gpt-sdpa": ModelConfig(arch="gpt", d_model=16, n_layers=2, n_heads=2, d_ff=32, attention="sdpa", dropout=0.0,
                            norm="post"),
    "lstm": ModelConfig(arch="lstm", d_model=16, n_layers=2, dropout=0.0),
}


def _steps(name: str, compile_backend: str | None, steps: int = 3) -> list[dict]:
    return _steps_on(name, compile_backend, CPU, steps)


def _steps_on(name: str, compile_backend: str | None, device: torch.device, steps: int = 3) -> list[dict]:
    """`steps` training steps of model `name` on `device`, eager or compiled by `compile_backend`."""
    torch.manual_seed(0)
    cfg = MODELS[name]
    model = build_model(cfg, VOCAB, VOCAB, PAD).to(device).train()
    workload = RandomPairs() if cfg.arch == "encoder_decoder" else RandomSegments()
    tc = TrainConfig(optimizer="adam", lr=1e-2, schedule="constant", warmup_steps=0, max_steps=10, clip_grad_norm=0.5)
    optimizer = build_optimizer(model.parameters(), tc)
    watch = Watch(model, optimizer, device)
    trained = model if compile_backend is None else compiled(model, "default", backend=compile_backend)
    return [train_step(trained, optimizer, None, workload, tc, step, device, watch) for step in range(1, steps + 1)]


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_training_gives_the_eager_losses_and_measures(name: str):
    torch._dynamo.reset()
    eager, traced = _steps(name, None), _steps(name, "aot_eager")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    for before, after in zip(eager, traced):
        measures = [key for key in before if key.startswith(("loss", "grad_norm", "act_norm", "final_ln"))]
        assert len(measures) >= 3 and set(measures) <= set(after)
        assert {k: after[k] for k in measures} == pytest.approx({k: before[k] for k in measures}, rel=1e-5)
        assert after["saved_bytes"] > 0  # what the compiled graph saves, counted by the same hooks


def test_the_cuda_graph_modes_are_refused_with_the_key_and_the_allowed_values():
    params = tiny_params({"studies": {"toy": {"train": {"compile": "reduce-overhead"}}}})
    with pytest.raises(ConfigError, match=r"studies\.toy.*train\.compile.*'off', 'default'"):
        config.validate(params)


def test_compile_off_is_left_out_of_the_digest_and_yaml_switches_mean_off_and_default():
    cfg = config.validate(tiny_params())
    run = cfg.run("toy", "copy")
    assert "compile" not in run.model_dump(mode="json")["train"]
    assert TrainConfig(compile=False).compile == "off" and TrainConfig(compile=True).compile == "default"
    on = run.model_copy(update={"train": run.train.model_copy(update={"compile": "default"})})
    assert on.digest() != run.digest()


@pytest.mark.slow
def test_a_run_trains_compiled_by_inductor_to_the_eager_losses(tmp_path: Path):
    """The real path: `train.compile: default` through `tdiag train`, TorchInductor
    generating C++ for the CPU; the per-step losses match the eager run's."""
    losses = {}
    for mode in ("off", "default"):
        project = lm_project(tmp_path / mode, epochs=1)
        tdiag("data", "prepare", "wikitext2", cwd=project)
        tdiag("--set", f"studies.lm.train.compile={mode}", "train", "lm", GPT_RUN, "--threads", "1", cwd=project)
        summary = json.loads((project / paths.run_summary("lm", GPT_RUN)).read_text())
        assert summary["status"] == "completed"
        losses[mode] = [r["loss"] for r in records(project, GPT_RUN, "train")]
    assert losses["default"] == pytest.approx(losses["off"], rel=1e-4)
    log = (project / paths.seed_log("lm", GPT_RUN, 0)).read_text()
    assert "the training forward is compiled (torch.compile, mode default)" in log
