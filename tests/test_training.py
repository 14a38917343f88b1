"""The training loop end to end on the copy task: records, checkpoints, resume, divergence."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tdiag, tiny_params, write_params
from tdiag.config import StopWhen, TrainConfig
from tdiag.report import collect, figures
from tdiag.train.loop import evaluates_after, stop_reached

RUN = Path("results/runs/toy/copy")
SEED0 = RUN / "seed-0"


def records(folder: Path, kind: str = "train", seed_dir: Path = SEED0) -> list[dict]:
    lines = (folder / seed_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def summary(folder: Path) -> dict:
    """The run's summary (over seeds); its first seed's is summary(...)["per_seed"][0]."""
    return json.loads((folder / RUN / "summary.json").read_text())


def test_run_folder_holds_config_metrics_checkpoint_and_summary(tiny_project: Path):
    tdiag("train", "toy", "copy", cwd=tiny_project)
    seed = tiny_project / SEED0
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "log"} <= {p.name for p in seed.iterdir()}
    config = json.loads((seed / "config.json").read_text())
    assert config["seed"] == 0 and config["config"]["train"]["max_steps"] == 60
    assert {"git", "packages", "hardware", "python"} <= set(config)
    assert config["packages"]["torch"].startswith("2.13.0")

    steps = records(tiny_project)
    assert [r["step"] for r in steps] == list(range(1, 61))
    for key in ("loss", "lr", "grad_norm", "step_time", "tokens", "peak_memory_bytes", "saved_bytes",
                "act_norm/encoder.0", "act_norm/decoder.0", "grad_norm/encoder.0", "grad_norm/decoder.0",
                "final_ln/weight_norm", "final_ln/grad_norm"):
        assert all(r[key] is not None for r in steps), key
    assert config["tokens_per_step"] is None  # a copy batch's target tokens depend on its padding
    assert steps[0]["tokens"] == 50 * 5  # 50 sequences x (4 symbols + <stop>) predicted tokens
    assert steps[-1]["loss"] < steps[0]["loss"] / 2
    evals = records(tiny_project, "eval")
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    assert all({"exact_match", "token_accuracy", "loss", "bleu", "teacher_forced_exact_match"} <= set(r) for r in evals)
    assert "tok:none" in evals[-1]["bleu_signature"]

    result = summary(tiny_project)
    assert result["status"] == "completed" and result["seeds"] == [0]
    first = result["per_seed"][0]
    assert first["steps"] == 60 and first["test"]["examples"] == 20
    assert result["memory_measure"] == first["memory_measure"] == "cpu_tensor_bytes"
    assert first["saved_bytes_max"] == max(r["saved_bytes"] for r in steps) > 0
    assert first["peak_memory_bytes"] == steps[-1]["peak_memory_bytes"] == result["peak_memory_bytes"] == (
        first["parameter_bytes"] + first["gradient_bytes"] + first["optimizer_state_bytes"] + first["saved_bytes_max"])
    assert first["parameter_bytes"] == first["gradient_bytes"] == 4 * config["parameters"]
    assert result["test"]["exact_match"] == first["test"]["exact_match"]
    assert len(first["samples"]) == 5 and {"source", "reference", "hypothesis"} <= set(first["samples"][0])


def test_the_final_valid_scores_are_the_last_steps_evaluation_when_it_scored_every_example(tiny_project: Path):
    done = tdiag("train", "toy", "copy", cwd=tiny_project)
    assert "final evaluation on every example of test (valid: the evaluation of step 60)" in done.stderr
    last = records(tiny_project, "eval")[-1]
    final = summary(tiny_project)["per_seed"][0]["valid"]
    assert last["step"] == 60 and final["examples"] == 20
    assert final == {key: last[key] for key in final}

    # Periodic evaluations of 5 examples: the final one scores every example anew.
    fewer = tdiag("--set", "studies.toy.train.eval_examples=5", "train", "toy", "copy", cwd=tiny_project)
    assert "final evaluation on every example of test, valid\n" in fewer.stderr
    assert records(tiny_project, "eval")[-1]["examples"] == 5
    assert summary(tiny_project)["per_seed"][0]["valid"]["examples"] == 20


@pytest.mark.parametrize("train, expected", [
    ({"max_steps": 60, "eval_every": 25}, [25, 50, 60]),  # in steps: every eval_every steps, and the last
    ({"max_steps": 45, "eval_every": None}, [20, 40, 45]),  # ... or every epoch's end
    ({"max_steps": None, "epochs": 2, "eval_every": 15}, [15, 20, 35, 40]),  # in epochs: counted within each
    ({"max_steps": None, "epochs": 2, "eval_every": None}, [20, 40]),
])
def test_evaluation_steps(train: dict, expected: list[int]):
    tc = TrainConfig(**train)
    total = tc.max_steps or tc.epochs * 20
    assert [step for step in range(1, total + 1) if evaluates_after(step, tc, 20, total)] == expected


def test_every_seed_trains_in_its_own_folder_and_the_run_summary_averages_them(tiny_project: Path):
    tdiag("--set", "studies.toy.seeds=2", "--set", "studies.toy.train.max_steps=20", "train", "toy", "copy",
          cwd=tiny_project)
    result = summary(tiny_project)
    assert result["seeds"] == [0, 1]
    losses = [records(tiny_project, seed_dir=RUN / f"seed-{s}")[0]["loss"] for s in (0, 1)]
    assert losses[0] != losses[1], "different seeds must initialise differently"
    per_seed = [s["test"]["token_accuracy"] for s in result["per_seed"]]
    assert result["test"]["token_accuracy"] == pytest.approx(sum(per_seed) / 2)


def test_rerun_after_a_kill_keeps_finished_seeds_and_resumes_the_unfinished_one(tiny_project: Path):
    two_seeds = ["--set", "studies.toy.seeds=2"]
    tdiag(*two_seeds, "train", "toy", "copy", cwd=tiny_project)
    before = summary(tiny_project)
    # What a kill during seed 1, after its last checkpoint, leaves behind:
    (tiny_project / RUN / "summary.json").unlink()
    (tiny_project / RUN / "seed-1" / "summary.json").unlink()
    again = tdiag(*two_seeds, "train", "toy", "copy", cwd=tiny_project)
    assert "toy/copy seed 0: already finished (completed): kept" in again.stderr
    assert "resuming from checkpoint at step 60" in again.stderr
    assert summary(tiny_project)["test"] == before["test"]


def test_sigkilled_run_resumes_from_checkpoint_with_identical_losses(tmp_path: Path):
    params = tiny_params({"studies": {"toy": {"train": {"max_steps": 400, "checkpoint_every": 25, "eval_every": 200}}}})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
        write_params(folder, params)
        tdiag("data", "synth", "copy", cwd=folder)

    tdiag("train", "toy", "copy", "--threads", "1", cwd=straight)

    proc = subprocess.Popen(
        [sys.executable, "-m", "tdiag", "train", "toy", "copy", "--threads", "1"],
        cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    metrics = killed / SEED0 / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count('"kind": "train"') >= 60:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / RUN / "summary.json").exists(), "killed too late: the run had finished"
    steps_before_kill = len(records(killed))
    assert 60 <= steps_before_kill < 400

    resumed = tdiag("train", "toy", "copy", "--threads", "1", cwd=killed)
    checkpoint_step = (steps_before_kill // 25) * 25
    assert f"resuming from checkpoint at step {checkpoint_step}" in resumed.stderr
    assert f"resuming from checkpoint at step {checkpoint_step}" in (killed / SEED0 / "log").read_text()

    assert [r["step"] for r in records(killed)] == list(range(1, 401))
    assert [r["loss"] for r in records(killed)] == [r["loss"] for r in records(straight)]
    assert summary(killed)["per_seed"][0]["resumed_from"] == [checkpoint_step]
    assert summary(killed)["test"] == summary(straight)["test"]


def test_rerun_of_finished_run_with_new_config_starts_over(tiny_project: Path):
    tdiag("train", "toy", "copy", cwd=tiny_project)
    again = tdiag("--set", "studies.toy.train.lr=0.001", "train", "toy", "copy", cwd=tiny_project)
    assert "different configuration: starting from step 0" in again.stderr
    assert summary(tiny_project)["per_seed"][0]["resumed_from"] == []


def test_nan_loss_marks_run_diverged_and_the_stage_succeeds(tiny_project: Path):
    blow_up = ["--set", "studies.toy.train.optimizer=sgd", "--set", "studies.toy.train.lr=1e30",
               "--set", "studies.toy.train.clip_grad_norm=null", "--set", "studies.toy.train.schedule=constant"]
    done = tdiag(*blow_up, "train", "toy", "copy", cwd=tiny_project)
    assert done.returncode == 0
    assert summary(tiny_project)["status"] == "diverged"
    result = summary(tiny_project)["per_seed"][0]
    assert result["status"] == "diverged"
    assert 1 <= result["diverged_step"] < 60 and result["steps"] == result["diverged_step"] - 1
    last = records(tiny_project)[-1]
    assert last["diverged"] is True and last["loss"] is None and last["step"] == result["diverged_step"]


@pytest.mark.parametrize("precision", ["bf16"])
def test_bf16_autocast_trains_on_cpu(tiny_project: Path, precision: str):
    tdiag("--set", f"studies.toy.train.precision={precision}", "train", "toy", "copy", cwd=tiny_project)
    assert summary(tiny_project)["status"] == "completed"


def test_gradient_accumulation_matches_one_big_batch(tiny_project: Path, tmp_path: Path):
    tdiag("--set", "studies.toy.train.max_steps=5", "train", "toy", "copy", "--threads", "1", cwd=tiny_project)
    whole = [r["loss"] for r in records(tiny_project)]
    assert records(tiny_project, "grad_quality") == [], "one micro-batch: nothing to compare"
    tdiag("--set", "studies.toy.train.max_steps=5", "--set", "studies.toy.train.micro_batches=5",
          "train", "toy", "copy", "--threads", "1", cwd=tiny_project)
    accumulated = [r["loss"] for r in records(tiny_project)]
    assert accumulated == pytest.approx(whole, rel=1e-4)
    # Each evaluation (step 0 and the last step here) compares the two gradients.
    quality = records(tiny_project, "grad_quality")
    assert [(r["step"], r["micro_batches"]) for r in quality] == [(0, 5), (5, 5)]
    assert all(r["grad_cosine"] > 1 - 1e-6 and r["grad_rel_diff"] < 1e-5 for r in quality)


@pytest.mark.slow
def test_committed_smoke_config_learns_copy_to_exact_match_1(tmp_path: Path):
    """The foundation's claim: the copy task is learned to 100% on held-out sequences."""
    import shutil

    from conftest import REPO

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    tdiag("--set", "scale=smoke", "data", "synth", "copy", cwd=tmp_path)
    tdiag("--set", "scale=smoke", "train", "toy", "copy", cwd=tmp_path)
    result = summary(tmp_path)
    assert result["status"] == "completed"
    assert result["test"]["exact_match"] == 1.0 and result["per_seed"][0]["test"]["examples"] == 1000


def test_a_cpu_run_keeps_freed_memory_for_its_next_steps(tiny_project: Path, monkeypatch):
    """glibc would hand a step's freed tensors back to the OS and page them in again the
    next step; every CPU run raises its thresholds first (devices.retain_freed_host_memory)."""
    from tdiag import config, devices
    from tdiag.train.loop import train_run

    calls = []
    monkeypatch.setattr(devices, "retain_freed_host_memory", lambda: calls.append("set") or True)
    cfg = config.load(tiny_project / "params.yaml", ["studies.toy.train.max_steps=2"])
    train_run(cfg, "toy", "copy", root=tiny_project)
    assert calls == ["set"] and summary(tiny_project)["status"] == "completed"


STOP_AT_ONCE = ["--set", "studies.toy.train.stop_when={metric: token_accuracy, at_least: 0.0, for_steps: 20}"]
"""Met by every evaluation: the tiny copy run (evaluations at 20, 40, 60) stops at step 40."""


def test_stop_when_ends_a_seed_once_its_evaluations_have_met_it_for_so_many_steps(tiny_project: Path):
    done = tdiag(*STOP_AT_ONCE, "train", "toy", "copy", cwd=tiny_project)
    assert "stopping early at step 40/60: valid token_accuracy >= 0 at every evaluation for 20 steps" in done.stderr
    assert [r["step"] for r in records(tiny_project)] == list(range(1, 41))
    assert [r["step"] for r in records(tiny_project, "eval")] == [0, 20, 40]
    first = summary(tiny_project)["per_seed"][0]
    assert first["status"] == "completed" and first["stopped_early"] is True
    assert first["steps"] == 40 and first["max_steps"] == 60 and first["test"]["examples"] == 20
    shown = figures.run_table(collect.load_runs(tiny_project, "toy")).loc[("copy", 0)]
    assert shown["status"] == "completed, stopped early" and shown["steps"] == 40

    # Killed after the checkpoint at the stop, before the summaries: the rerun stays stopped.
    (tiny_project / RUN / "summary.json").unlink()
    (tiny_project / SEED0 / "summary.json").unlink()
    again = tdiag(*STOP_AT_ONCE, "train", "toy", "copy", cwd=tiny_project)
    assert "resuming from checkpoint at step 40" in again.stderr
    assert [r["step"] for r in records(tiny_project)] == list(range(1, 41))
    assert summary(tiny_project)["per_seed"][0]["stopped_early"] is True


def test_stop_when_never_met_trains_to_max_steps(tiny_project: Path):
    never = ["--set", "studies.toy.train.stop_when={metric: loss, at_most: 0.0}"]
    tdiag(*never, "train", "toy", "copy", cwd=tiny_project)
    first = summary(tiny_project)["per_seed"][0]
    assert first["steps"] == 60 and first["stopped_early"] is False


@pytest.mark.parametrize("valid, stops", [
    ([0.5, 1.0, 1.0, 1.0], True),  # held at 20, 30, 40: 20 steps
    ([1.0, 1.0, 0.9, 1.0], False),  # broken at 30: held only since 40
    ([0.5, 0.5, 1.0, 1.0], False),  # held for 10 steps
    ([1.0, 1.0, 1.0, 0.5], False),  # the latest misses
    ([1.0, None, 1.0, 1.0], False),  # a non-finite value (recorded as null) meets nothing
])
def test_stop_reached_needs_every_evaluation_of_the_last_for_steps_to_meet_it(valid: list, stops: bool):
    stop = StopWhen(metric="exact_match", at_least=1.0, for_steps=20)
    records = [{"kind": "eval", "split": "valid", "step": 0, "exact_match": 1.0}]  # step 0 never counts
    records += [{"kind": "eval", "split": "valid", "step": 10 * (i + 1), "exact_match": v} for i, v in enumerate(valid)]
    records += [{"kind": "eval", "split": "train", "step": 40, "exact_match": 0.0}]  # other splits neither
    assert stop_reached(stop, records) is stops


def test_stop_when_leaves_the_digest_of_runs_without_it_alone():
    assert "stop_when" not in TrainConfig().model_dump(mode="json")
    assert TrainConfig(stop_when={"metric": "bleu", "at_least": 99}).model_dump(mode="json")["stop_when"] == {
        "metric": "bleu", "at_least": 99.0, "at_most": None, "for_steps": 0}
