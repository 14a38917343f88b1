"""The DVC side: each stage tracks only the keys it reads, dvc.lock matches the stage
list, outputs are cached (push/pull), and experiments show headline metrics and curves.

The end-to-end tests run real DVC on the tiny configuration (every study but the lab,
whose stages DVC only loads: `_dvc_params`) in a git repository in a temporary folder:
one `dvc repro` of that pipeline, which every test here starts from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, needs_mirror, tiny_params, write_params
from test_pipeline import _check_outputs
from tdiag import config, paths, plan
from tdiag.config import yaml_text

PROJECT_FILES = ("workflow", "notebooks", "src", "claims.yaml", ".dvc", ".dvcignore", ".gitignore")
TOY_TRAIN = {"train_toy_copy", "train_toy_dates", "train_toy_qk_wo_1", "train_toy_qk_wo_2"}
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def _repo_dvc() -> dict:
    return yaml.safe_load(plan.dvc_file(config.load(REPO / "params.yaml"), yaml_text.read(REPO / "params.yaml")))


def _path(entry) -> str:
    """A dep or out: a path (dvc.yaml), {path: options} (dvc.yaml) or {path: ..., hash: ...} (dvc.lock)."""
    if isinstance(entry, str):
        return entry
    return entry["path"] if "path" in entry else next(iter(entry))


def _shape(stage: dict) -> dict:
    """What dvc.lock must agree on with dvc.yaml: command, dep/out paths, param keys (not hashes).
    dvc.lock lists params as {params.yaml: {key: value}} and metrics among the outs."""
    params = stage.get("params") or []
    keys = sorted(params.get("params.yaml", {}) if isinstance(params, dict) else params)
    return {
        "cmd": stage["cmd"],
        "deps": sorted(_path(e) for e in stage.get("deps") or []),
        "params": keys,
        "outs": sorted(_path(e) for e in (stage.get("outs") or []) + (stage.get("metrics") or [])),
    }


def _stale(lock: dict, dvc: dict) -> list[str]:
    """Where dvc.lock disagrees with dvc.yaml: stage names, then each stage's shape."""
    lock, dvc = lock["stages"], dvc["stages"]
    if sorted(lock) != sorted(dvc):
        return [f"stage names: {sorted(set(lock) ^ set(dvc))}"]
    return [name for name, stage in dvc.items() if _shape(lock[name]) != _shape(stage)]


def test_committed_dvc_lock_matches_the_stage_list():
    lock_file = REPO / "dvc.lock"
    assert lock_file.is_file(), "dvc.lock is not committed: run `dvc repro` and commit dvc.lock"
    stale = _stale(yaml.safe_load(lock_file.read_text()), _repo_dvc())
    assert not stale, f"dvc.lock is stale ({', '.join(stale)}): run `dvc repro` and commit dvc.lock"


def test_each_stage_tracks_only_the_keys_it_reads():
    raw = yaml_text.read(REPO / "params.yaml")
    stages = _repo_dvc()["stages"]
    copy = stages["train_toy_copy"]["params"]
    assert "studies.toy.runs.copy" in copy and "studies.toy.train" in copy and "scale" in copy
    assert not {"studies.toy", "scales", "studies.toy.runs", "studies.toy.runs.reverse", "studies.lm.train"} & set(copy)
    assert stages["train_toy_qk_wo_1"]["params"].count("studies.toy.grids.qk_wo") == 1
    for name, stage in stages.items():
        for key in stage.get("params", []):  # DVC refuses a key the file does not have
            node = raw
            for part in key.split("."):
                node = node[part]
        if name.startswith("data_fetch_"):
            assert "params" not in stage  # the mirror's location changes no fetched byte
    for scale in ("smoke", "full"):
        for key, section in (raw["scales"].get(scale) or {}).get("studies", {}).get("toy", {}).items():
            if key not in ("runs", "grids"):
                assert f"scales.{scale}.studies.toy.{key}" in copy


# ---------------------------------------------------------------------- real DVC


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _dvc(*args: str, cwd: Path, timeout: int = 900) -> str:
    return _run([str(BIN / "dvc"), *args], cwd, timeout)


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _dvc_params() -> dict:
    """The tiny configuration without the lab, with a key held per scale, as in the real
    file (so not in the common section): DVC tracks it in each scale section, and `scale`
    too. The lab's 29 stages are the same kind of stage as the lm study's (Snakemake runs
    them all, test_snakemake.py); DVC spends seconds per stage reading its lock file, and
    this module runs on one worker while the rest of the suite shares the other."""
    params = tiny_params()
    del params["studies"]["lab"]
    del params["studies"]["toy"]["train"]["eval_every"]
    params["scales"] = {s: {"studies": {"toy": {"train": {"eval_every": 20}}}} for s in ("smoke", "full")}
    return params


def test_dvc_builds_the_graph_of_the_committed_pipeline(tmp_path: Path):
    """Every stage of the committed dvc.yaml, the lab's included, loads and joins one graph
    in DVC (no output claimed twice, no cycle): the end-to-end tests below run a part."""
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy2(REPO / name, tmp_path / name)
    (tmp_path / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    _run(["git", "init", "-q"], tmp_path)
    nodes = set(re.findall(r'^\s*"([^"]+)";$', _dvc("dag", "--dot", cwd=tmp_path), re.MULTILINE))
    assert nodes == set(_repo_dvc()["stages"])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny project, committed to git, after a full `dvc repro` (dvc.lock committed)."""
    if not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("offline data mirror not present")
    project = tmp_path_factory.mktemp("dvc") / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        else:
            shutil.copy2(source, project / name)
    write_params(project, _dvc_params())
    stages = subprocess.run([str(BIN / "tdiag"), "stages", "--dvc"], cwd=project, capture_output=True, text=True,
                            env=ENV, check=True)
    (project / "dvc.yaml").write_text(stages.stdout)
    _run(["git", "init", "-q", "-b", "main"], project)
    _run(["git", "add", "-A"], project)
    _run(GIT + ["commit", "-qm", "project"], project)
    _dvc("repro", cwd=project, timeout=2400)  # every stage, one at a time: 9 min alone on 2 cores
    _run(["git", "add", "dvc.lock"], project)
    _run(GIT + ["commit", "-qm", "dvc.lock"], project)
    return project


def _copy(built: Path, tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(built, project, symlinks=True)
    return project


@pytest.mark.slow
@needs_mirror
def test_dvc_repro_runs_every_stage_then_is_up_to_date(built: Path):
    _check_outputs(built)  # every study's page, each in a browser
    assert "up to date" in _dvc("status", cwd=built)


@pytest.fixture(scope="module")
def experiment(built: Path, tmp_path_factory) -> tuple[Path, dict, str]:
    """A copy of the built project in which one key was changed in params.yaml and run as
    an experiment (`dvc exp run --name lr-half`): the project, `dvc status --json` after
    the change, and the experiment's output. Both tests below read the one run (each
    `dvc exp run` here is minutes, most of it DVC reading its lock file per stage)."""
    project = _copy(built, tmp_path_factory.mktemp("experiment"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["studies"]["toy"]["train"]["lr"] = 0.5
    write_params(project, params)
    changed = json.loads(_dvc("status", "--json", cwd=project))
    return project, changed, _dvc("exp", "run", "--name", "lr-half", cwd=project)


@pytest.mark.slow
@needs_mirror
def test_a_changed_key_reruns_only_the_stages_that_read_it(built: Path, experiment):
    lock, dvc = (yaml.safe_load((built / name).read_text()) for name in ("dvc.lock", "dvc.yaml"))
    assert not _stale(lock, dvc)  # the check the committed dvc.lock gets, on a lock DVC wrote
    dvc["stages"]["collect_toy"]["deps"].pop()
    assert _stale(lock, dvc) == ["collect_toy"]
    project, changed, ran = experiment
    assert set(changed) == TOY_TRAIN, changed  # downstream stages show once their inputs change
    assert _ran(ran) == TOY_TRAIN | {"collect_toy", "report_toy", "report_index"}, ran
    assert "up to date" in _dvc("status", cwd=project)
    # A forced rerun keeps the persisted run folder: the finished seed is kept, not retrained.
    rerun = _dvc("repro", "--force", "--single-item", "train_toy_copy", cwd=project)
    assert "already finished" in rerun, rerun[-2000:]


@pytest.mark.slow
@needs_mirror
def test_experiments_show_headline_metrics_and_curves(experiment):
    project, _, _ = experiment
    shown = json.loads(_dvc("exp", "show", "--json", cwd=project))
    rows = {e["name"]: e for row in shown for e in [row] + [x for e in row.get("experiments") or []
                                                            for x in e["revs"]]}
    for name in ("lr-half", "main"):  # the experiment and its baseline commit (branch main)
        metrics = rows[name]["data"]["metrics"]["results/toy/metrics.json"]["data"]
        assert isinstance(metrics["test_exact_match"]["copy"], float), rows[name]["data"]["metrics"]
        assert "error" not in rows[name]["data"]["metrics"]["results/lm/metrics.json"]
    table = _dvc("exp", "show", "--only-changed", "--drop", ".*/", "--csv", cwd=project).splitlines()  # README's
    assert "studies.toy.train.lr" in table[0] and "test_exact_match.copy" in table[0], table[0]
    assert len(table[0].split(",")) <= 30 and not any("!" in row for row in table), table
    plots = json.loads(_dvc("plots", "diff", "HEAD", "lr-half", "--json", cwd=project))
    for plot in ("toy_loss", "toy_lr", "toy_grad_norm", "toy_valid_loss", "lm_loss"):
        revs = {d["rev"] for d in plots["data"][plot][0]["content"]["data"]["values"]}
        assert revs == {"HEAD", "lr-half"}, (plot, revs)


@pytest.mark.slow
@needs_mirror
def test_an_edited_module_reruns_its_code_stage_then_exactly_the_stages_that_run_it(built: Path, tmp_path: Path):
    project = _copy(built, tmp_path)
    digests = str(paths.code_digests("check"))
    runs_suite = {name for name, st in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items()
                  if digests in st.get("deps", [])}
    suite = project / "src/tdiag/checks/suite.py"
    suite.write_text(suite.read_text() + "# an edit\n")
    assert set(json.loads(_dvc("status", "--json", cwd=project))) == {"code_check"}
    assert _ran(_dvc("repro", "--single-item", "code_check", cwd=project)) == {"code_check"}
    assert runs_suite and set(json.loads(_dvc("status", "--json", cwd=project))) == runs_suite


@pytest.mark.slow
@needs_mirror
def test_push_then_pull_restores_every_output(built: Path, tmp_path: Path):
    project = _copy(built, tmp_path)
    _dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=project)
    _dvc("push", cwd=project)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    shutil.copy2(project / ".dvc" / "config", clone / ".dvc" / "config")  # the remote, uncommitted here
    _dvc("pull", cwd=clone)
    assert "up to date" in _dvc("status", cwd=clone)
    assert json.loads((clone / "results/runs/toy/copy/summary.json").read_text())["status"] == "completed"
    assert (clone / "results/runs/toy/copy/seed-0/metrics.jsonl").is_file()
    assert (clone / "reports/index.html").is_file() and (clone / "results/toy/metrics.json").is_file()
    assert not list(clone.glob("results/runs/**/checkpoint.pt")), "checkpoints are not cached"
