"""Checkpoints a user can hand the loop, and checks that come before a finished run is touched.

Checkpoints hold only tensors and plain values and are read weights-only, digest first;
one that cannot be read (planted, truncated, not a checkpoint) is logged and training
starts over; temporaries a kill left are removed; a refused command (precision, memory)
leaves a finished run byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, tdiag
from tdiag import atomic, config
from tdiag.config import ConfigError, ModelConfig, TrainConfig
from tdiag.errors import UserError
from tdiag.models import build_model
from tdiag.train import checkpoint, memory_estimate
from tdiag.train.loop import train_run

SHORT = ["studies.toy.train.max_steps=4", "studies.toy.train.checkpoint_every=2", "studies.toy.train.eval_every=2"]
RUN = Path("results/runs/toy/copy")
SEED0 = RUN / "seed-0"


def short_run(project: Path, *extra: str) -> dict:
    return train_run(config.load(project / "params.yaml", [*SHORT, *extra]), "toy", "copy", root=project)


def first_train_step(project: Path) -> int:
    lines = (project / SEED0 / "metrics.jsonl").read_text().splitlines()
    return next(r["step"] for r in map(json.loads, lines) if r["kind"] == "train")


class RunsCode:
    """Unpickling it would run a shell command (what a hostile checkpoint holds)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------ format


def test_a_checkpoint_holds_only_what_the_weights_only_loader_accepts(tiny_project: Path):
    short_run(tiny_project)
    saved = torch.load(tiny_project / SEED0 / "checkpoint.pt", weights_only=True)
    assert saved["format"] == checkpoint.FORMAT and saved["step"] == 4
    assert isinstance(saved["rng"]["python"]["state"], torch.Tensor)
    assert isinstance(saved["rng"]["numpy"]["keys"], torch.Tensor)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path: Path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # a cached Gaussian is part of each state
    path = tmp_path / "rng.pt"
    torch.save(checkpoint.rng_states(), path)
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    checkpoint.restore_rng(torch.load(path, weights_only=True))
    again = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert again == expected


# ---------------------------------------------------------- unreadable files


def _planted_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"config_digest": "x", "model": RunsCode(marker)}, f)


def _planted_torch_save(path: Path, marker: Path) -> None:
    torch.save({"format": checkpoint.FORMAT, "config_digest": "x", "model": RunsCode(marker)}, path)


@pytest.mark.parametrize("plant", [_planted_pickle, _planted_torch_save], ids=["pickle", "torch.save"])
def test_a_planted_checkpoint_runs_no_code_and_the_run_starts_over(tiny_project: Path, tmp_path: Path, plant, caplog):
    marker = tmp_path / "owned"
    ckpt = tiny_project / SEED0 / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    plant(ckpt, marker)
    with caplog.at_level("WARNING", logger="tdiag.train"):
        result = short_run(tiny_project)
    assert not marker.exists(), "reading the checkpoint ran its code"
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and str(ckpt) in warning[0] and "could not be read" in warning[0]
    assert "starting from step 0" in warning[0]
    assert "could not be read" in (tiny_project / SEED0 / "log").read_text()
    assert result["per_seed"][0]["resumed_from"] == [] and first_train_step(tiny_project) == 1


def test_a_folder_at_the_checkpoint_path_is_one_user_error(tiny_project: Path):
    (tiny_project / SEED0 / "checkpoint.pt").mkdir(parents=True)
    with pytest.raises(UserError, match="checkpoint.pt is a folder where a file belongs"):
        short_run(tiny_project)
    assert (tiny_project / SEED0 / "checkpoint.pt").is_dir()


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, reason", [
    (_truncated, "truncated"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("not a checkpoint\n"), "not a checkpoint"),
    (lambda p: torch.save([1, 2, 3], p), "not a tdiag checkpoint"),
], ids=["truncated", "empty", "text", "foreign"])
def test_an_unreadable_checkpoint_is_logged_and_the_seed_starts_over(tiny_project: Path, damage, reason, caplog):
    short_run(tiny_project)
    # What a kill after the last checkpoint leaves, then the checkpoint damaged.
    (tiny_project / RUN / "summary.json").unlink()
    (tiny_project / SEED0 / "summary.json").unlink()
    ckpt = tiny_project / SEED0 / "checkpoint.pt"
    damage(ckpt)
    with caplog.at_level("WARNING", logger="tdiag.train"):
        result = short_run(tiny_project)
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and str(ckpt) in warning[0] and reason in warning[0], warning
    assert "\n" not in warning[0]
    assert result["per_seed"][0]["resumed_from"] == [] and first_train_step(tiny_project) == 1
    assert checkpoint.read(ckpt)["step"] == 4, "the new run checkpoints over the damaged file"


@pytest.mark.parametrize("part, value", [
    ("model", {"not.a.weight": torch.zeros(2)}),
    ("records", [torch.zeros(1)]),
    ("rng", {"python": [1, 2, 3]}),
])
def test_a_checkpoint_with_the_right_digest_but_foreign_contents_is_logged_and_the_seed_starts_over(
    tiny_project: Path, part: str, value, caplog
):
    straight = short_run(tiny_project)
    (tiny_project / RUN / "summary.json").unlink()
    (tiny_project / SEED0 / "summary.json").unlink()
    ckpt = tiny_project / SEED0 / "checkpoint.pt"
    torch.save({**torch.load(ckpt, weights_only=True), part: value}, ckpt)
    with caplog.at_level("WARNING", logger="tdiag.train"):
        result = short_run(tiny_project)
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and str(ckpt) in warning[0] and "could not be restored" in warning[0], warning
    assert result["per_seed"][0]["resumed_from"] == [] and first_train_step(tiny_project) == 1
    assert result["test"] == straight["test"], "the rebuilt model must be the one a fresh run starts from"


# ------------------------------------------------------------ stale temporaries


def test_remove_temporaries_takes_only_what_atomic_path_leaves(tmp_path: Path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    keep = ["checkpoint.pt", ".other.abc.tmp.pt", "checkpoint.tmp.pt", ".checkpoint.tmp.pt", ".checkpoint.x.tmp.json"]
    for name in keep:
        (tmp_path / name).write_text("")

    class Killed(BaseException):
        pass

    def killed(*args):
        raise Killed

    monkeypatch.setattr(atomic.os, "replace", killed)  # a kill just before the rename
    with pytest.raises(Killed), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
    monkeypatch.undo()
    # atomic_path removes its temporary on an exception; a SIGKILL would not: put it back.
    tmp.write_text("half")
    assert atomic.remove_temporaries(target) == [tmp]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_a_run_removes_the_temporaries_a_killed_write_left(tiny_project: Path):
    seed = tiny_project / SEED0
    seed.mkdir(parents=True)
    stale = [seed / ".checkpoint.k1ll3d.tmp.pt", seed / ".metrics.k1ll3d.tmp.jsonl",
             seed / ".summary.k1ll3d.tmp.json", tiny_project / RUN / ".summary.k1ll3d.tmp.json"]
    for path in stale:
        path.write_bytes(b"half a file")
    short_run(tiny_project)
    assert not [p for p in stale if p.exists()]
    assert not list((tiny_project / RUN).rglob("*.tmp.*"))


# ------------------------------------------------- nothing finished is touched


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("refused", [
    ["--set", "studies.toy.train.precision=fp16"],  # fp16 needs CUDA (devices.supports_precision)
    ["--set", "studies.toy.model.d_model=32768", "--set", "studies.toy.model.d_ff=131072"],
], ids=["fp16-on-cpu", "too-large"])
def test_a_refused_command_leaves_a_finished_run_byte_for_byte(tiny_project: Path, refused):
    tdiag(*[a for s in SHORT for a in ("--set", s)], "train", "toy", "copy", cwd=tiny_project)
    before = _snapshot(tiny_project / RUN)
    assert {"summary.json", "log", "seed-0/summary.json", "seed-0/checkpoint.pt"} <= set(before)
    done = tdiag(*[a for s in SHORT for a in ("--set", s)], *refused, "train", "toy", "copy",
                 cwd=tiny_project, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert _snapshot(tiny_project / RUN) == before


# ------------------------------------------------------------ memory estimate


def test_a_model_too_large_for_the_device_is_one_line_before_allocation(tiny_project: Path):
    began = time.monotonic()
    done = tdiag("--set", "studies.toy.model.d_model=32768", "--set", "studies.toy.model.d_ff=131072",
                 "train", "toy", "copy", cwd=tiny_project, check=False)
    assert time.monotonic() - began < 60, "refused only after building the model"
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(
        r"tdiag: error: studies\.toy\.runs\.copy: the model and batch need about [\d.]+ [GTP]iB "
        r"\(model\.d_model 32768, model\.d_ff 131072, train\.batch_size 50\) but cpu has [\d.]+ [KMGT]?i?B "
        r"available; lower model\.d_model, model\.d_ff or train\.batch_size",
        lines[0],
    ), lines[0]
    assert not (tiny_project / "results" / "runs").exists()


def test_the_check_refuses_only_what_exceeds_the_available_memory():
    model, train = ModelConfig(d_model=32, d_ff=64), TrainConfig(batch_size=50)
    need = memory_estimate.estimate(model, train, (20, 20)).total
    cpu = torch.device("cpu")
    assert memory_estimate.check("studies.toy.runs.copy", model, train, (20, 20), cpu, available=need).total == need
    with pytest.raises(ConfigError, match=r"^studies\.toy\.runs\.copy: the model and batch need about .* but cpu has"):
        memory_estimate.check("studies.toy.runs.copy", model, train, (20, 20), cpu, available=need - 1)


def test_optimizer_state_counts_two_moments_for_adam_one_for_momentum_none_for_sgd():
    model = ModelConfig(d_model=32, d_ff=64)
    sizes = {o: memory_estimate.estimate(model, TrainConfig(optimizer=o), (20, 20)) for o in ("sgd", "momentum", "adam")}
    p = sizes["sgd"].parameters * memory_estimate.BYTES_PER_ELEMENT
    assert sizes["momentum"].parameter_bytes - sizes["sgd"].parameter_bytes == p
    assert sizes["adam"].parameter_bytes - sizes["sgd"].parameter_bytes == 2 * p


@pytest.mark.parametrize("model", [
    ModelConfig(arch="encoder_decoder", d_model=32, d_ff=64, n_encoder_layers=2, n_decoder_layers=3, max_len=40),
    ModelConfig(arch="gpt", d_model=32, d_ff=64, n_layers=3, max_len=40),
    ModelConfig(arch="lstm", d_model=32, hidden_size=48, n_layers=3),
    ModelConfig(arch="lstm", d_model=32, n_layers=2, lstm_impl="scratch"),
], ids=["encoder_decoder", "gpt", "lstm", "lstm-scratch"])
def test_the_parameter_count_is_exact_without_building_the_model(model: ModelConfig):
    built = build_model(model, 23, 29, 0)
    assert memory_estimate.parameter_count(model, 23, 29) == sum(p.numel() for p in built.parameters())


@pytest.mark.parametrize("model", [
    ModelConfig(arch="encoder_decoder", d_model=32, d_ff=64, norm="post", positions="sinusoidal"),
    ModelConfig(arch="gpt", d_model=32, d_ff=64, tie_embeddings=True),
], ids=["post-norm-sinusoidal", "tied"])
def test_the_parameter_count_is_an_upper_bound_for_shared_or_missing_weights(model: ModelConfig):
    built = build_model(model, 23, 29, 0)
    assert memory_estimate.parameter_count(model, 23, 29) >= sum(p.numel() for p in built.parameters())


WIKITEXT2_VOCABULARY = 33278
"""WikiText-2's word vocabulary (Merity et al. 2016), the largest of the committed datasets."""


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_no_committed_run_is_refused_on_a_24_gib_machine(scale: str):
    cfg = config.load(REPO / "params.yaml", [f"scale={scale}"])
    vocab = (WIKITEXT2_VOCABULARY, WIKITEXT2_VOCABULARY)  # an upper bound for every dataset's vocabulary
    largest = max(
        memory_estimate.estimate(rc.model, rc.train, vocab).total
        for study in cfg.studies for rc in map(lambda run: cfg.run(study, run), cfg.run_names(study))
    )
    assert largest < 24 * 2**30
