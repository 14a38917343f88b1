"""The language-model study: data preparation, the LM workload, and training end to end."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from conftest import MIRROR, needs_mirror, tdiag, tiny_params, write_params
from tdiag import config, paths
from tdiag.config import ConfigError, LanguageModelTaskConfig, ModelConfig, TrainConfig
from tdiag.data import language_model as lm_data
from tdiag.errors import UserError
from tdiag.models import build_model
from tdiag.train import checkpoint
from tdiag.train.language_model_workload import EVAL_STREAMS, LanguageModelWorkload
from tdiag.train.loop import train_run

NOUNS = "cat dog bird fox mat tree house river".split()
VERBS = "sat ran slept jumped looked".split()
LSTM_RUN, GPT_RUN = "01-lstm-1l-adam", "06-gpt-1l-adamw"


def write_corpus(folder: Path, lines=(300, 80, 80), seed: int = 0) -> Path:
    """Three small WikiText-style files of templated sentences ('the cat sat on the mat .'),
    with a word only the held-out splits use, so it becomes <unk> there."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(paths.SPLITS, lines):
        text = []
        for i in range(n):
            words = ["the", rng.choice(NOUNS), rng.choice(VERBS), "on", "the", rng.choice(NOUNS), "."]
            if split != "train" and i == 0:
                words[1] = "zebra"
            text.append("" if i % 10 == 9 else " " + " ".join(words) + " ")
        (folder / f"wiki.{split}.tokens").write_text("\n".join(text) + "\n", encoding="utf-8")
    return folder


def prepared(tmp_path: Path, **cfg) -> tuple[Path, dict]:
    corpus = write_corpus(tmp_path / "corpus")
    meta = lm_data.prepare("mini", LanguageModelTaskConfig(path=str(corpus), **cfg), tmp_path)
    return tmp_path / paths.prepared_dir("mini"), meta


def lm_model(arch: str, vocab: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=16, **overrides)
    return build_model(cfg, vocab, vocab)


# ------------------------------------------------------------------------- prepare


def test_prepare_reads_a_users_own_corpus_given_by_one_path(tmp_path: Path):
    folder, meta = prepared(tmp_path)
    vocab = lm_data.Vocabulary.load(folder / "vocab.json")
    assert "zebra" not in vocab.index  # the vocabulary is the training split's
    streams = {s: torch.load(folder / f"{s}.pt") for s in paths.SPLITS}
    assert all(t.dtype == torch.long for t in streams.values())
    assert meta["tokens"] == {s: t.numel() for s, t in streams.items()}
    assert streams["valid"][1] == vocab.unk_id  # " the zebra sat ..." 
    assert meta["kind"] == "language_model" and meta["vocab_size"] == len(vocab)
    assert meta["card"]["label"] == f"user corpus at {tmp_path / 'corpus'}"
    assert meta["card"]["subset"] == ""
    on_disk = json.loads((folder / "meta.json").read_text())
    assert on_disk == meta
    assert (folder / "meta.json").stat().st_mtime_ns >= max((folder / f"{s}.pt").stat().st_mtime_ns for s in paths.SPLITS)


def test_prepare_keeps_the_first_tokens_and_says_so(tmp_path: Path):
    folder, meta = prepared(tmp_path, train_tokens=1000, eval_tokens=1000)
    assert meta["tokens"]["train"] == 1000 == torch.load(folder / "train.pt").numel()
    assert meta["source_tokens"]["train"] > 1000
    assert f"first 1,000 of {meta['source_tokens']['train']:,} train tokens" in meta["card"]["subset"]


def test_a_missing_split_file_is_one_line_naming_it(tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "wiki.test.tokens").unlink()
    with pytest.raises(UserError, match=r"wiki\.test\.tokens is missing \(test split\); point datasets\.mini\.path"):
        lm_data.prepare("mini", LanguageModelTaskConfig(path=str(corpus)), tmp_path)


def test_prepare_before_fetch_tells_to_fetch(tmp_path: Path):
    write_params(tmp_path, tiny_params())
    done = tdiag("data", "prepare", "wikitext2", cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tdiag: error: corpus 'wikitext2' is not fetched (resources/wikitext2/source.json is missing); "
        "run `tdiag data fetch wikitext2`"
    ]


@needs_mirror
def test_mirror_fetch_then_prepare_is_labelled_the_offline_resplit(tmp_path: Path):
    params = tiny_params()
    params["data"]["mirror"] = None  # the mirror comes from the command line here
    write_params(tmp_path, params)
    tdiag("--set", f"data.mirror={MIRROR}", "data", "fetch", "wikitext2", cwd=tmp_path)
    tdiag("data", "prepare", "wikitext2", cwd=tmp_path)
    meta = json.loads((tmp_path / paths.prepared_meta("wikitext2")).read_text())
    assert meta["card"]["label"] == "WikiText-2 (offline re-split)"
    assert meta["card"]["source"]["origin"] == "mirror" and "re-split" in meta["card"]["source"]["note"]
    assert meta["tokens"] == {"train": 3000, "valid": 2000, "test": 2000}
    assert meta["source_tokens"]["train"] == 217646  # 213,886 words + one <eos> per line (3,760)
    assert meta["vocab_size"] == 13777


# --------------------------------------------------------------------- the workload


def workload(folder: Path, meta: dict, **train) -> LanguageModelWorkload:
    settings = {"epochs": 1, "max_steps": None, "bptt": 8, "batch_size": 4, **train}
    return LanguageModelWorkload(folder, meta, TrainConfig(**settings), torch.device("cpu"))


def test_lstm_state_carries_across_segments_and_a_state_dict_round_trip_resumes_exactly(tmp_path: Path):
    folder, meta = prepared(tmp_path)
    model = lm_model("lstm", meta["vocab_size"])
    first = workload(folder, meta)
    batch = first.train_batch(1, seed=0)
    assert batch.n_tokens == 4 * 8 and batch.stats == {"tokens": 32}
    first.loss(model, batch.micro[0], batch.n_tokens, 0.0)
    saved = first.state_dict()
    assert saved["hidden"][0].shape == (2, 4, 16)

    next_batch = first.train_batch(2, seed=0)
    carried = first.loss(model, next_batch.micro[0], next_batch.n_tokens, 0.0)

    resumed = workload(folder, meta)
    resumed.load_state_dict(torch.load(_saved(tmp_path, saved)))
    again = resumed.loss(model, resumed.train_batch(2, seed=0).micro[0], next_batch.n_tokens, 0.0)
    assert again.item() == carried.item()

    fresh = workload(folder, meta)  # the same segment from a zero state scores differently
    from_zero = fresh.loss(model, fresh.train_batch(2, seed=0).micro[0], next_batch.n_tokens, 0.0)
    assert from_zero.item() != carried.item()


def _saved(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "workload.pt"
    torch.save(state, path)
    return path


def test_an_epoch_starts_from_a_zero_state_and_reads_segments_in_order(tmp_path: Path):
    folder, meta = prepared(tmp_path)
    wl = workload(folder, meta)
    rows = lm_data.batchify(torch.load(folder / "train.pt"), 4)
    assert wl.steps_per_epoch == lm_data.n_segments(rows, 8)
    model = lm_model("lstm", meta["vocab_size"])
    for step in range(1, wl.steps_per_epoch + 1):
        inputs, targets = wl.train_batch(step, seed=0).micro[0]
        assert torch.equal(inputs, rows[:, (step - 1) * 8 : (step - 1) * 8 + inputs.shape[1]])
        wl.loss(model, (inputs, targets), targets.numel(), 0.0)
    assert wl.state_dict()["hidden"] is not None
    wl.train_batch(wl.steps_per_epoch + 1, seed=0)  # epoch 2, segment 0
    assert wl.state_dict()["hidden"] is None
    wl.load_state_dict({"hidden": None})
    wl.reset()
    assert wl.state_dict() == {"hidden": None}


@pytest.mark.parametrize("arch", ["lstm", "gpt"])
def test_evaluation_scores_every_token_of_the_split(tmp_path: Path, arch: str):
    folder, meta = prepared(tmp_path)
    wl = workload(folder, meta)
    model = lm_model(arch, meta["vocab_size"], dropout=0.3)
    result = wl.evaluate(model, "valid")
    assert model.training, "evaluation restores the training mode"
    n = meta["tokens"]["valid"]
    assert result["tokens"] == EVAL_STREAMS * (n // EVAL_STREAMS - 1)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    rows = lm_data.batchify(torch.load(folder / "valid.pt"), EVAL_STREAMS)
    model.eval()
    with torch.no_grad():
        if arch == "lstm":  # segments with the state carried == one pass over the whole rows
            logits, _ = model(rows[:, :-1])
            whole = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
            assert result["loss"] == pytest.approx(whole.item(), rel=1e-5)
        else:  # each segment of bptt tokens is its own context
            total = 0.0
            for start in range(0, rows.shape[1] - 1, 8):
                end = min(start + 8, rows.shape[1] - 1)
                logits = model(rows[:, start:end])
                total += torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), rows[:, start + 1 : end + 1].flatten(), reduction="sum"
                ).item()
            assert result["loss"] == pytest.approx(total / result["tokens"], rel=1e-5)


@pytest.mark.parametrize("arch", ["lstm", "gpt"])
def test_samples_are_greedy_continuations_of_test_prompts(tmp_path: Path, arch: str):
    folder, meta = prepared(tmp_path)
    out = workload(folder, meta).samples(lm_model(arch, meta["vocab_size"]), n=2, prompt=6, length=12)
    assert len(out) == 2
    for sample in out:
        assert len(sample["prompt"].split()) == 6 and sample["prompt"].startswith("the ")
        assert len(sample["continuation"].split()) == 12 == len(sample["reference"].split())


# ------------------------------------------------------------------ configuration


def test_a_gpt_segment_longer_than_its_position_table_is_refused_at_load(tmp_path: Path):
    params = tiny_params({"studies": {"lm": {"train": {"bptt": 100}}}})
    with pytest.raises(ConfigError) as err:
        config.validate(params)
    message = str(err.value)
    assert message.startswith(f"'studies.lm.runs.{GPT_RUN}'")
    assert "train.bptt (100) exceeds model.max_len (64)" in message


def test_an_lstm_step_cannot_be_split_into_micro_batches():
    params = tiny_params({"studies": {"lm": {"train": {"micro_batches": 2}}}})
    with pytest.raises(ConfigError, match=rf"'studies.lm.runs.{LSTM_RUN}': train.micro_batches \(2\) must be 1"):
        config.validate(params)


def test_study_level_nulls_reach_every_run():
    cfg = config.validate(tiny_params())
    train = cfg.run("lm", LSTM_RUN).train
    assert train.max_steps is None and train.epochs == 1 and train.eval_every is None


# ------------------------------------------------------------------------ training


def lm_project(tmp_path: Path, **train) -> Path:
    corpus = write_corpus(tmp_path / "corpus")
    faster = {"train": {"lr": 0.01}}  # the tiny corpus is learned within two epochs
    params = tiny_params({
        "datasets": {"wikitext2": {"path": str(corpus), "train_tokens": None, "eval_tokens": None}},
        "studies": {"lm": {"train": {"epochs": 2, "bptt": 10, **train}, "runs": {LSTM_RUN: faster, GPT_RUN: faster}}},
    })
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, params)
    return project


def records(project: Path, run: str, kind: str) -> list[dict]:
    lines = (project / paths.seed_metrics("lm", run, 0)).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.parametrize("run", [LSTM_RUN, GPT_RUN])
def test_train_lm_writes_a_perplexity_per_epoch(tmp_path: Path, run: str):
    project = lm_project(tmp_path)
    tdiag("data", "prepare", "wikitext2", cwd=project)
    tdiag("train", "lm", run, "--threads", "1", cwd=project)
    summary = json.loads((project / paths.run_summary("lm", run)).read_text())
    seed = summary["per_seed"][0]
    per_epoch = seed["steps_per_epoch"]
    assert seed["status"] == "completed" and seed["steps"] == 2 * per_epoch
    evals = records(project, run, "eval")
    assert [r["step"] for r in evals] == [0, per_epoch, 2 * per_epoch]
    assert [r["epoch"] for r in evals] == [0.0, 1.0, 2.0]
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"])) for r in evals)
    assert evals[-1]["perplexity"] < evals[0]["perplexity"] / 2
    steps = records(project, run, "train")
    assert all(r["tokens"] > 0 and r["step_time"] > 0 and r["peak_memory_bytes"] > 0 for r in steps)
    blocks = ("act_norm/embedding", "act_norm/lstm") if run == LSTM_RUN else ("act_norm/layer.0", "final_ln/grad_norm")
    assert all(r[key] > 0 for r in steps for key in (*blocks, "grad_norm/layer.0", "saved_bytes"))
    config = json.loads((project / paths.seed_config("lm", run, 0)).read_text())
    assert config["tokens_per_step"] == 10 * 10 == steps[0]["tokens"]  # batch_size x bptt
    assert seed["best_valid"]["metric"] == "perplexity"
    assert seed["best_valid"]["value"] == min(r["perplexity"] for r in evals)
    assert set(seed["test"]) == {"loss", "perplexity", "tokens"}
    assert len(seed["samples"]) == 3 and seed["samples"][0]["continuation"]


def test_a_run_in_epochs_is_evaluated_every_eval_every_steps_of_each_epoch_and_at_its_end(tmp_path: Path):
    project = lm_project(tmp_path, eval_every=7)
    tdiag("data", "prepare", "wikitext2", cwd=project)
    tdiag("train", "lm", GPT_RUN, "--threads", "1", cwd=project)
    per_epoch = json.loads((project / paths.run_summary("lm", GPT_RUN)).read_text())["per_seed"][0]["steps_per_epoch"]
    assert per_epoch % 7, "the epoch's end must fall between two eval_every points"
    into_epoch = [j for j in range(1, per_epoch + 1) if j % 7 == 0 or j == per_epoch]
    expected = [0] + [epoch * per_epoch + j for epoch in (0, 1) for j in into_epoch]
    evals = records(project, GPT_RUN, "eval")
    assert [r["step"] for r in evals] == expected
    assert [r["epoch"] for r in evals] == [step / per_epoch for step in expected]
    assert {r["tokens"] for r in evals} == {evals[0]["tokens"]}  # the whole split every time


def test_an_interrupted_lstm_run_resumes_mid_epoch_bit_for_bit(tmp_path: Path, monkeypatch):
    """The hidden state carried across segments is restored from the checkpoint: the
    resumed run's losses equal an uninterrupted run's, step for step."""
    straight = lm_project(tmp_path / "straight", checkpoint_every=4)
    interrupted = lm_project(tmp_path / "interrupted", checkpoint_every=4)
    for project in (straight, interrupted):
        tdiag("data", "prepare", "wikitext2", cwd=project)
    cfg = config.load(straight / "params.yaml", ["studies.lm.model.dropout=0.2"])  # RNG state matters too
    train_run(cfg, "lm", LSTM_RUN, root=straight)

    class Interrupted(Exception):
        pass

    save, saves = checkpoint.save, []

    def save_then_stop(path, **kwargs):
        save(path, **kwargs)
        saves.append(kwargs["state"].step)
        if len(saves) == 3:
            raise Interrupted

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(Interrupted):
        train_run(cfg, "lm", LSTM_RUN, root=interrupted)
    monkeypatch.setattr(checkpoint, "save", save)
    stopped_at = saves[-1]
    per_epoch = json.loads((straight / paths.run_summary("lm", LSTM_RUN)).read_text())["per_seed"][0]["steps_per_epoch"]
    assert stopped_at % per_epoch, "the interruption must fall inside an epoch, where the state matters"
    saved = checkpoint.read(interrupted / paths.seed_checkpoint("lm", LSTM_RUN, 0))
    assert saved["workload"]["hidden"] is not None

    train_run(cfg, "lm", LSTM_RUN, root=interrupted)
    resumed = records(interrupted, LSTM_RUN, "train")
    assert [r["step"] for r in resumed] == list(range(1, 2 * per_epoch + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records(straight, LSTM_RUN, "train")]
    summary = json.loads((interrupted / paths.run_summary("lm", LSTM_RUN)).read_text())["per_seed"][0]
    assert summary["resumed_from"] == [stopped_at]
