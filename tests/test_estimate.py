"""`tdiag estimate`: each run's optimizer steps and evaluations at the active scale, and
their expected time from a probe of real steps on this machine."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_TRAIN, needs_mirror, tdiag, tiny_params
from tdiag import config
from tdiag.train.estimate import RunEstimate, estimate, table


def test_each_run_is_probed_with_its_own_steps_and_evaluations(tiny_project):
    tdiag("data", "synth", "dates", cwd=tiny_project)
    cfg = config.load(tiny_project / "params.yaml")
    _, runs = estimate(cfg, ["toy"], tiny_project, probe_steps=2)
    assert [r.run for r in runs] == cfg.run_names("toy")
    for r in runs:
        assert r.steps == TINY_TRAIN["max_steps"] and r.seeds == 1
        # the untrained baseline, then every eval_every steps, on each split the workload follows
        assert r.evaluations == TINY_TRAIN["max_steps"] // TINY_TRAIN["eval_every"] + 1
        assert r.step_seconds > 0 and r.evaluation_seconds > 0
        assert r.seconds == pytest.approx(r.steps * r.step_seconds + r.evaluations * r.evaluation_seconds)


def test_the_table_sums_steps_and_never_beats_the_longest_run():
    runs = [RunEstimate("toy", "a", 2, 100, 3, 0.5, 2.0), RunEstimate("toy", "b", 1, 300, 1, 1.0, 0.0)]
    cfg = config.validate(tiny_params(), env={})
    lines = table(cfg, "cpu", runs, jobs=8).splitlines()
    toy = lines[2].split()
    assert toy[:3] == ["toy", "2", "500"]  # 2 x 100 + 300 steps
    # in sequence: 2 x (50 + 6) + 300 = 412 s; 8 at once: no faster than run b's 300 s
    assert toy[-4:] == ["6.9", "min", "5.0", "min"]


@needs_mirror
def test_an_epoch_based_run_counts_the_steps_of_its_prepared_data(tiny_project):
    tdiag("data", "fetch", "wikitext2", cwd=tiny_project)
    tdiag("data", "prepare", "wikitext2", cwd=tiny_project)
    cfg = config.load(tiny_project / "params.yaml")
    _, runs = estimate(cfg, ["lm"], tiny_project, probe_steps=1)
    tdiag("train", "lm", runs[0].run, cwd=tiny_project)
    summary = json.loads((tiny_project / f"results/runs/lm/{runs[0].run}/summary.json").read_text())
    assert runs[0].steps == summary["per_seed"][0]["max_steps"]


def test_the_cli_prints_one_row_per_study_and_refuses_missing_data(tiny_project):
    done = tdiag("estimate", "toy", "--probe-steps", "1", cwd=tiny_project, check=False)
    assert done.returncode == 2 and "dataset 'dates' not found" in done.stderr and "Traceback" not in done.stderr
    tdiag("data", "synth", "dates", cwd=tiny_project)
    out = tdiag("estimate", "toy", "--probe-steps", "1", "--jobs", "3", cwd=tiny_project).stdout
    assert "scale smoke, probed on cpu" in out and "3 at once" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["toy", "all"]
