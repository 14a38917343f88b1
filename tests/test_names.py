"""Names a user writes (datasets, studies, runs, grids) and the paths made from them:
checked when params load, checked again where a path is made and before a command
writes, and quoted in every generated stage command."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, _merge, tdiag, tiny_params, write_params
from tdiag import cli, config, paths, plan
from tdiag.errors import UserError
from tdiag.stage import Stage

FUZZ = Path(__file__).parent / "fuzz" / "names"
CASES = sorted(FUZZ.glob("*.yaml"))


def _project(tmp_path: Path, extra: dict | None = None) -> Path:
    """A project folder four levels down, so a name climbing out of it still lands in tmp_path."""
    project = tmp_path / "a" / "b" / "c" / "d" / "project"
    project.mkdir(parents=True)
    write_params(project, _merge(tiny_params({"scale": "smoke"}), extra or {}))
    return project


def _files(tmp_path: Path) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if p.is_file()}


def _main(project: Path, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(project)
    code = cli.main(argv)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ fuzz cases


def test_there_are_enough_hostile_name_cases():
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_hostile_name_is_refused_in_one_line_and_nothing_is_written(case, tmp_path, monkeypatch, capsys):
    spec = yaml.safe_load(case.read_text(encoding="utf-8"))
    project = _project(tmp_path, spec.get("params"))
    before = _files(tmp_path)
    argv = [arg for o in spec.get("set", []) for arg in ("--set", o)] + spec.get("argv", ["validate"])

    code, err = _main(project, argv, monkeypatch, capsys)

    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tdiag: error: params.yaml: ") and "Traceback" not in err
    for expected in spec["expect"]:
        assert expected in lines[0]
    assert not (project / "results").exists()
    assert _files(tmp_path) == before


# ------------------------------------------------------------- the pattern


@pytest.mark.parametrize("name", ["copy", "x.y-z", "_private", "01-lstm-1l-adam", "A" * 100])
def test_plain_names_load_and_make_their_folders(name, tmp_path):
    project = _project(tmp_path, {"studies": {"toy": {"runs": {name: {"dataset": "copy"}}}}})
    cfg = config.load(project / "params.yaml")
    assert cfg.run("toy", name).dataset == "copy"
    assert paths.inside(project, paths.run_dir("toy", name)) == project / "results" / "runs" / "toy" / name


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "/abs", ".git", "-rf", "a b", "a\x00b", "é", "a" * 101])
def test_every_path_function_refuses_a_name_that_is_not_one_plain_component(name):
    for make in (paths.corpus_dir, paths.synthetic_dir, paths.prepared_dir, paths.study_table,
                 paths.notebook, paths.executed_notebook, paths.report_page):
        with pytest.raises(UserError, match="bad name"):
            make(name)
    with pytest.raises(UserError, match="bad name"):
        paths.run_dir("toy", name)
    with pytest.raises(UserError, match="bad name"):
        paths.seed_checkpoint(name, "copy", 0)


def test_override_adding_a_run_is_checked_like_the_file(tmp_path):
    project = _project(tmp_path)
    with pytest.raises(config.ConfigError, match=r"'studies\.toy\.runs': bad name 'x/y'"):
        config.load(project / "params.yaml", ["studies.toy.runs.x/y.dataset=copy"])


# ------------------------------------------------------- writes stay inside


def test_unknown_names_on_the_command_line_are_refused_before_any_write(tmp_path, monkeypatch, capsys):
    project = _project(tmp_path)
    before = _files(tmp_path)
    for argv in (["data", "synth", "../../../../x"], ["train", "toy", "../../../x"], ["collect", "../x"],
                 ["report", "../../x"], ["train", "toy", "two\nlines"], ["data", "prepare", "two\nlines"],
                 ["report", "two\nlines"], ["data", "fetch", "two\nlines"]):
        code, err = _main(project, argv, monkeypatch, capsys)
        assert code == 2 and len(err.splitlines()) == 1, (argv, err)
    assert _files(tmp_path) == before


def test_inside_refuses_a_path_that_a_link_sends_outside(tmp_path):
    project, outside = tmp_path / "project", tmp_path / "outside"
    (project / "results" / "runs").mkdir(parents=True)
    outside.mkdir()
    (project / "results" / "runs" / "toy").symlink_to(outside)
    with pytest.raises(UserError, match="refusing to write"):
        paths.inside(project, paths.run_dir("toy", "copy"))
    assert paths.inside(project, paths.run_dir("lm", "copy")) == project / "results/runs/lm/copy"


def test_inside_lets_the_top_results_folder_be_a_link(tmp_path):
    """results/ on a scratch disk: the link is the user's own choice, and writes below it
    still may not leave it."""
    project, scratch = tmp_path / "project", tmp_path / "scratch"
    (scratch / "runs").mkdir(parents=True)
    project.mkdir()
    (project / "results").symlink_to(scratch)
    assert paths.inside(project, paths.run_dir("toy", "copy")) == project / "results/runs/toy/copy"
    (scratch / "runs" / "lm").symlink_to(tmp_path)
    with pytest.raises(UserError, match="refusing to write"):
        paths.inside(project, paths.run_dir("lm", "copy"))


@pytest.mark.parametrize(
    "link, argv",
    [
        ("results/runs/toy", ["train", "toy", "copy"]),
        ("results/data/synthetic", ["data", "synth", "copy"]),
        ("results/toy", ["collect", "toy"]),
        ("reports/toy.html", ["report", "toy"]),
    ],
)
def test_a_command_refuses_to_write_through_a_link_out_of_the_project(link, argv, tmp_path, monkeypatch, capsys):
    """A results/ folder received from someone else may hold links pointing anywhere."""
    project, outside = _project(tmp_path), tmp_path / "outside"
    outside.mkdir()
    (project / link).parent.mkdir(parents=True, exist_ok=True)
    (project / link).symlink_to(outside)

    code, err = _main(project, argv, monkeypatch, capsys)

    assert code == 2
    assert len(err.splitlines()) == 1 and "refusing to write" in err
    assert list(outside.iterdir()) == []


def test_train_with_a_run_added_through_set_climbing_out_is_refused(tmp_path):
    """The CLI as a user runs it: exit 2, one line, nothing written anywhere."""
    project = _project(tmp_path)
    before = _files(tmp_path)
    done = tdiag("--set", 'studies.toy.runs={"../../../x": {dataset: copy}}', "train", "toy", "../../../x",
                 cwd=project, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and "'studies.toy.runs'" in done.stderr
    assert _files(tmp_path) == before


# ----------------------------------------------------------- stage commands


def test_reserved_and_colliding_names_are_refused(tmp_path, monkeypatch, capsys):
    project = _project(tmp_path, {"studies": {"toy": {"runs": {"a-b": {"dataset": "copy"}, "a.b": {"dataset": "copy"}}}}})
    code, err = _main(project, ["stages"], monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "`tdiag train toy a-b` and `tdiag train toy a.b` would both be stage 'train_toy_a_b'" in err


def test_names_with_dashes_and_dots_make_valid_dvc_stage_names(tmp_path):
    study = dict(tiny_params()["studies"]["toy"], runs={"r.1": {"dataset": "my-copy"}}, grids={})
    project = _project(tmp_path, {"datasets": {"my-copy": {"task": "copy"}}, "studies": {"my-toy": study}})
    names = {st.name: st.args for st in plan.stages(config.load(project / "params.yaml"))}
    assert names["data_synth_my_copy"] == ("data", "synth", "my-copy")
    assert names["train_my_toy_r_1"] == ("train", "my-toy", "r.1")
    assert names["report_my_toy"] == ("report", "my-toy")


def _dvc_cmd(*args: str) -> str:
    text = plan.dvc_yaml([Stage(name="s", args=args, deps=(), outs=("out",))], params={})
    return yaml.safe_load(text)["stages"]["s"]["cmd"]


def test_dvc_commands_of_plain_names_read_as_before():
    cfg = config.load(REPO / "params.yaml")
    for st in plan.stages(cfg):
        assert _dvc_cmd(*st.args) == " ".join(("tdiag", *st.args))


def test_dvc_command_of_a_hostile_name_runs_nothing_but_tdiag(tmp_path):
    """Were such a name to get through, the shell DVC runs `cmd` with sees one argument."""
    hostile = ("train", "toy", f"x; touch {tmp_path}/owned; #", "copy (long)", "$(touch owned2)")
    cmd = _dvc_cmd(*hostile)
    assert shlex.split(cmd) == ["tdiag", *hostile]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tdiag").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (bin_dir / "tdiag").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == list(hostile)
    assert not (tmp_path / "owned").exists() and not (tmp_path / "owned2").exists()
