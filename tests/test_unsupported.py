"""`train.unsupported_precision: record`: a run the device cannot train in its precision
is written as finished and untrained, the report reads it beside trained runs, and a
device that can do the precision trains it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tdiag
from tdiag import config, devices, paths
from tdiag.report import collect, figures
from tdiag.train.loop import train_run

RECORD = ["--set", "studies.toy.train.unsupported_precision=record"]


def test_fp16_on_cpu_is_recorded_as_unsupported_and_never_trained(tiny_project: Path):
    done = tdiag("--set", "studies.toy.train.precision=fp16", *RECORD, "train", "toy", "copy", cwd=tiny_project)
    assert "not trained on cpu" in done.stderr and "recorded as unsupported" in done.stderr
    result = json.loads((tiny_project / paths.run_summary("toy", "copy")).read_text())
    assert result["status"] == "unsupported" and result["seeds"] == [0]
    assert "fp16" in result["reason"] and "CUDA" in result["reason"] and "\n" not in result["reason"]
    assert result["test"] is None and result["per_seed"][0]["steps"] == 0
    assert not (tiny_project / paths.seed_dir("toy", "copy", 0)).exists(), "no seed trained, in no precision"
    # What DVC and Snakemake expect of the stage, empty.
    assert json.loads((tiny_project / paths.run_metrics("toy", "copy")).read_text()) == {
        "test_exact_match": None, "valid_exact_match": None, "diverged_seeds": 0}
    assert (tiny_project / paths.run_curves("toy", "copy", "train")).read_text() == "step\tloss\tlr\tgrad_norm\n"
    assert (tiny_project / paths.run_curves("toy", "copy", "eval")).read_text() == "step\n"
    assert "not trained on cpu" in (tiny_project / paths.run_log("toy", "copy")).read_text()


def test_stop_still_refuses_the_run_in_one_line(tiny_project: Path):
    done = tdiag("--set", "studies.toy.train.precision=fp16", "train", "toy", "copy", cwd=tiny_project, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "studies.toy.runs.copy.train.precision: fp16" in last and "train.unsupported_precision: record" in last
    assert not (tiny_project / paths.run_summary("toy", "copy")).exists()


def test_the_report_reads_an_unsupported_run_beside_a_trained_one_which_a_capable_device_then_trains(
        tiny_project: Path, monkeypatch):
    cfg = config.load(tiny_project / "params.yaml", ["studies.toy.train.max_steps=5",
                                                     "studies.toy.train.unsupported_precision=record"])
    train_run(cfg, "toy", "copy", root=tiny_project)
    with monkeypatch.context() as patch:
        patch.setattr(devices, "supports_precision", lambda device, precision: f"{precision} pretended unsupported")
        train_run(cfg, "toy", "qk_wo-1", root=tiny_project)

    runs = collect.load_runs(tiny_project, "toy").set_index("run")
    assert runs.loc["copy", "status"] == "completed"
    unsupported = runs.loc["qk_wo-1"]
    assert unsupported["status"] == "unsupported" and unsupported["reason"] == "fp32 pretended unsupported"
    assert unsupported["config.model.init.tie"] == "none" and unsupported["variant"] == "tie=none"
    metrics = collect.load_metrics(tiny_project, "toy")
    assert set(metrics["run"]) == {"copy"}
    fates = figures.steps_to_threshold(metrics, runs.reset_index())["other seeds"]
    assert fates["qk_wo-1"] == "seed 0: not trained (fp32 pretended unsupported)"
    assert figures.run_table(runs.reset_index()).loc[("qk_wo-1", 0), "status"] == "unsupported"

    # On a device that can: the stale record is replaced by training.
    assert train_run(cfg, "toy", "qk_wo-1", root=tiny_project)["status"] == "completed"
    assert collect.load_runs(tiny_project, "toy").set_index("run").loc["qk_wo-1", "steps"] == 5
