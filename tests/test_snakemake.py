"""The Snakemake side of the experiment loop, through real Snakemake on the tiny project:
lint, a run killed with SIGKILL and finished by the plain command, overrides that rerun
only the stages whose settings they change, and the report archive."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, needs_mirror
from test_pipeline import OWN_MODEL, _check_outputs, _project_copy, _run
from tdiag import config, plan
from tdiag.cli import OVERRIDES_ENV, env_overrides
from tdiag.config import ConfigError
from tdiag.stage import stage_name

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
LINT_REASON = re.compile(r'^# Lint "(?P<title>[^"]+)" stays: \S', re.MULTILINE)


def test_env_overrides_come_before_set_and_refuse_a_bad_value():
    assert env_overrides({}) == []
    assert env_overrides({OVERRIDES_ENV: '["studies.toy.train.lr=0.5"]'}) == ["studies.toy.train.lr=0.5"]
    with pytest.raises(ConfigError, match=OVERRIDES_ENV):
        env_overrides({OVERRIDES_ENV: "studies.toy.train.lr=0.5"})


def test_tdiag_reads_overrides_from_the_environment(tiny_project: Path):
    env = {**os.environ, OVERRIDES_ENV: '["scale=full"]'}
    done = subprocess.run([sys.executable, "-m", "tdiag", "validate"], cwd=tiny_project, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "-> full" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "tdiag", "--set", "scale=smoke", "validate"], cwd=tiny_project,
                          env=env, capture_output=True, text=True)
    assert "-> smoke" in done.stdout, "--set wins over the environment"


def test_lint_is_clean_but_for_lints_with_a_reason(tmp_path: Path):
    project = _project_copy(tmp_path)
    done = subprocess.run(SNAKEMAKE + ["--lint"], cwd=project, capture_output=True, text=True, timeout=300)
    titles = set(re.findall(r"^\s+\* (.+):$", done.stdout + done.stderr, re.MULTILINE))
    reasons = {m["title"] for f in (REPO / "workflow").rglob("*.smk") for m in LINT_REASON.finditer(f.read_text())}
    reasons |= {m["title"] for m in LINT_REASON.finditer((REPO / "workflow" / "Snakefile").read_text())}
    assert done.returncode == 0 or titles, done.stdout + done.stderr  # a failure that is not lints
    assert titles <= reasons, f"lints without a reason comment: {sorted(titles - reasons)}"


def test_each_study_has_a_target_rule_that_builds_its_page_and_what_it_needs(tmp_path: Path):
    project = _project_copy(tmp_path)
    expected = {
        "toy": {"data_synth_copy", "data_synth_dates", "train_toy_copy", "train_toy_dates", "train_toy_qk_wo_1",
                "train_toy_qk_wo_2", "collect_toy", "report_toy", "toy"},
        "lm": {"data_fetch_wikitext2", "data_prepare_wikitext2", "train_lm_01_lstm_1l_adam",
               "train_lm_06_gpt_1l_adamw", "collect_lm", "report_lm", "lm"},
        "wmt14": {"data_fetch_wmt14", "data_prepare_wmt14_en_fr", "bpe_learn_wmt14_en_fr", "bpe_apply_wmt14_en_fr",
                  "train_wmt14_overfit", "collect_wmt14", "report_wmt14", "wmt14"},
    }
    cfg = config.load(project / "params.yaml")
    expected["lab"] = {"data_fetch_wikitext2", "data_prepare_wikitext2", "collect_lab", "report_lab", "lab"} | {
        stage_name("train", "lab", run) for run in cfg.run_names("lab")
    }
    assert len(expected["lab"]) == 5 + 22  # the tiny lab's seven grids hold 22 cells
    assert set(expected) == set(cfg.studies)
    checks = {study: {stage_name("check", study, run) for run in plan.checked_runs(cfg, study)} for study in expected}
    assert checks["toy"] == {"check_toy_copy", "check_toy_dates", "check_toy_qk_wo_2"}  # qk_wo-1 is copy's model
    for study, rules in expected.items():
        assert set(_dry_run(project, study)) == rules | checks[study]


def test_a_second_run_in_the_same_folder_is_refused(tmp_path: Path):
    project = _project_copy(tmp_path)
    lock = project / ".snakemake" / "tdiag-run.lock"
    lock.parent.mkdir()
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running snakemake holds it
        done = subprocess.run(SNAKEMAKE + ["--cores", "1", "toy"], cwd=project, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 2 and "another snakemake run is working in this folder" in done.stderr
    assert not (project / "results").exists(), "nothing ran"


def _jobs(dry_run_output: str) -> dict[str, int]:
    """The `Job stats` table of `snakemake -n`: rule -> job count ({} when nothing is to be done)."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1]
    rows = re.findall(r"^(\S+)\s+(\d+)$", table.split("\ntotal", 1)[0], re.MULTILINE)
    return {rule: int(count) for rule, count in rows}


def _dry_run(project: Path, *args: str) -> dict[str, int]:
    done = _run(SNAKEMAKE + [*args, "-n", "--quiet", "rules"], project)
    return _jobs(done.stdout + done.stderr)


def _training_mid_run(project: Path) -> Path | None:
    """A run folder with a checkpoint and no summary: a training job is running."""
    for checkpoint in (project / "results/runs").glob("*/*/seed-*/checkpoint.pt"):
        if not (checkpoint.parent.parent / "summary.json").exists():
            return checkpoint.parent.parent
    return None


@pytest.fixture(scope="module")
def killed_then_finished(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny project after `snakemake --cores 2` was killed with SIGKILL (its whole
    process group) while a training job ran, then run again with the same plain command;
    with the run folder that was killed mid-training. The example GPT is trained beside
    the lm study's GPT run (`OWN_MODEL`)."""
    project = _project_copy(tmp_path_factory.mktemp("killed"), OWN_MODEL)
    command = SNAKEMAKE + ["--cores", "2"]
    first = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline, killed_run = time.monotonic() + 600, None
    while killed_run is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        killed_run = _training_mid_run(project)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert killed_run is not None, "no training job was caught mid-run"
    assert not (killed_run / "summary.json").exists()
    _run(command, project)
    return project, killed_run


@pytest.mark.slow
@needs_mirror
def test_a_killed_run_is_finished_by_the_plain_command(killed_then_finished):
    project, killed_run = killed_then_finished
    assert (project / "results/runs/lm/06-gpt-1l-adamw.mine/summary.json").exists()
    _check_outputs(project)  # every study's page, the own model's section, each page in a browser
    seed = json.loads((killed_run / "summary.json").read_text())["per_seed"][0]
    assert seed["status"] == "completed" and seed["resumed_from"][0] > 0, "training resumes from its checkpoint"
    assert _dry_run(project) == {}


@pytest.mark.slow
@needs_mirror
def test_an_override_reruns_only_the_stages_whose_settings_it_changes(killed_then_finished):
    project, _ = killed_then_finished
    jobs = _dry_run(project, "--config", "studies={toy: {train: {lr: 0.5}}}")
    toy_training = {rule for rule in jobs if rule.startswith("train_")}
    assert toy_training == {"train_toy_copy", "train_toy_dates", "train_toy_qk_wo_1", "train_toy_qk_wo_2"}
    assert set(jobs) - toy_training == {"collect_toy", "report_toy", "report_index", "all"}
    # The data stage of one dataset changes, and only what trains on it follows.
    jobs = _dry_run(project, "--config", "datasets={dates: {n_train: 200}}")
    assert set(jobs) == {"data_synth_dates", "train_toy_dates", "check_toy_dates", "collect_toy", "report_toy",
                         "report_index", "all"}
    assert _dry_run(project) == {}


@pytest.mark.slow
@needs_mirror
def test_an_edited_module_reruns_exactly_the_stages_that_run_it(killed_then_finished, monkeypatch):
    project, _ = killed_then_finished
    monkeypatch.chdir(project)
    runs_suite = {st.name for st in plan.stages(config.load("params.yaml"))
                  if "src/tdiag/checks/suite.py" in st.code.files}
    suite = project / "src/tdiag/checks/suite.py"
    text = suite.read_text()
    suite.write_text(text + "# an edit\n")
    try:
        jobs = _dry_run(project)
    finally:
        suite.write_text(text)
    assert runs_suite and {rule for rule in jobs if rule.startswith(("data_", "train_", "check_"))} == runs_suite
    assert _dry_run(project) == {}, "the same contents, newer on disk: nothing to redo"


@pytest.mark.slow
@needs_mirror
def test_a_study_target_and_the_report_archive_hold_the_study_pages(killed_then_finished):
    project, _ = killed_then_finished
    assert _dry_run(project, "toy") == {}
    _run(SNAKEMAKE + ["--report", "report.zip"], project)
    with zipfile.ZipFile(project / "report.zip") as archive:
        names = archive.namelist()
        for page in ("toy.html", "wmt14.html", "lm.html", "lab.html", "index.html"):
            [member] = [n for n in names if n.endswith(f"/{page}") and "/data/raw/" in n]
            assert archive.read(member) == (project / "reports" / page).read_bytes()
        assert sum(n.endswith("/runs.csv") for n in names) == 4
