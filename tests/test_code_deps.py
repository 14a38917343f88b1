"""A stage's code dependencies are derived from the import statements, never hand-kept:
editing any module a stage's command runs reruns the stage (DVC through the stage's code
stage, Snakemake through the digest param), and a finished seed is kept only for the
code that made it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tdiag import cli, config, paths, plan, stage
from tdiag.config import yaml_text
from tdiag.stage import Code, Stage, code_digest, notebook_modules, source_files
from tdiag.train import loop
from tdiag.train.loop import train_run


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "tdiag"
    for rel, text in files.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    return package


def test_imports_are_followed_through_functions_packages_and_named_attributes(tmp_path, monkeypatch):
    package = _package(tmp_path, {
        "__init__.py": "",
        "entry.py": "import os\n\ndef run():\n    from tdiag.sub import helper\n    return helper\n",
        "sub/__init__.py": "from . import registry\n",
        "sub/helper.py": "WORKLOAD = 'tdiag.sub.named:Workload'\n",
        "sub/registry.py": "import json\n",
        "sub/named.py": "from ..leaf import x\n",
        "leaf.py": "x = 1\n",
        "unused.py": "import tdiag.entry\n",
    })
    monkeypatch.setattr(stage, "_SOURCE_ROOT", package)
    assert source_files("entry.py") == tuple(
        str(Path("src/tdiag") / rel)
        for rel in ("__init__.py", "entry.py", "leaf.py", "sub/__init__.py", "sub/helper.py", "sub/named.py", "sub/registry.py")
    )
    before = code_digest("entry.py")
    (package / "leaf.py").write_text("x = 2\n")
    edited = code_digest("entry.py")
    assert edited != before
    (package / "unused.py").write_text("y = 3\n")  # not imported by the entry: no change
    assert code_digest("entry.py") == edited


def test_every_module_a_training_command_loads_is_in_its_stage_code(tiny_project):
    """Run a real `tdiag train` and list the tdiag modules it imported: each must be one
    of the training stage's source files (only the command-line front is not)."""
    loaded = tiny_project / "loaded.json"
    script = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(json.dumps(sorted("
        "m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'tdiag' and getattr(m, '__file__', None)))))\n"
        "sys.argv = ['tdiag', 'train', 'toy', 'copy']\n"
        "runpy.run_module('tdiag', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tiny_project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    package = Path(stage.__file__).resolve().parent
    used = {Path(f).resolve().relative_to(package).as_posix() for f in json.loads(loaded.read_text())}
    used -= {"__main__.py", "cli.py"}
    stages = {s.name: s for s in plan.stages(config.load(tiny_project / "params.yaml"))}
    code = {Path(f).relative_to("src/tdiag").as_posix() for f in stages["train_toy_copy"].code.files}
    assert used and used <= code, f"loaded but not in the stage's code: {sorted(used - code)}"


def test_a_report_stage_depends_on_what_its_notebook_imports():
    imported = notebook_modules(REPO / "notebooks" / "lm.ipynb")
    assert "report/language_model.py" in imported and "report/figures.py" in imported
    stages = {s.name: s for s in plan.stages(config.load(REPO / "params.yaml"))}
    assert "src/tdiag/report/language_model.py" in stages["report_lm"].code.files
    assert "src/tdiag/report/language_model.py" not in stages["report_toy"].code.files
    assert "src/tdiag/report/render.py" in stages["report_toy"].code.files
    template = REPO / "src/tdiag/report/templates/offline"  # the page's look: a change redoes the page
    assert {f"src/tdiag/report/templates/offline/{f.name}" for f in template.iterdir()} <= set(
        stages["report_toy"].code.files)


def test_a_finished_seed_is_retrained_when_the_training_code_changes(tiny_project, monkeypatch, caplog):
    cfg = config.load(tiny_project / "params.yaml")
    train_run(cfg, "toy", "copy", root=tiny_project)
    caplog.clear()
    train_run(cfg, "toy", "copy", root=tiny_project)
    assert "already finished" in caplog.text
    caplog.clear()
    monkeypatch.setattr(loop, "code_digest", lambda *modules: "other code")
    train_run(cfg, "toy", "copy", root=tiny_project)
    assert "already finished" not in caplog.text and "completed" in caplog.text


def test_dvc_reaches_each_stage_code_through_one_code_stage_per_set_of_files():
    cfg = config.load(REPO / "params.yaml")
    stage_list = plan.stages(cfg)
    dvc = yaml.safe_load(plan.dvc_file(cfg, yaml_text.read(REPO / "params.yaml")))["stages"]
    order = list(dvc)
    sets = {st.code.name: st.code for st in stage_list}
    assert len(sets) > 10  # one per command and study page; two commands may run the same files
    for st in stage_list:
        digests = str(paths.code_digests(st.code.name))
        code_stage = dvc[f"code_{st.code.name}"]
        assert code_stage["cmd"] == " ".join(("tdiag", "code", st.code.name, *st.code.files))
        assert code_stage["deps"] == list(st.code.files) and code_stage["outs"] == [digests]
        assert order.index(f"code_{st.code.name}") < order.index(st.name)
        deps = dvc[st.name].get("deps", [])
        assert digests in deps and not any(dep.startswith("src/") for dep in deps), st.name
    assert set(order) == {st.name for st in stage_list} | {f"code_{name}" for name in sets}


def test_two_sets_of_files_under_one_name_are_refused():
    one = Stage(name="a", args=("a",), deps=(), outs=("x",), code=Code("shared", ("src/tdiag/paths.py",)))
    two = Stage(name="b", args=("b",), deps=(), outs=("y",), code=Code("shared", ("src/tdiag/errors.py",)))
    plan.dvc_yaml([one, replace(one, name="c", outs=("z",))], params={})  # the same set twice: one code stage
    with pytest.raises(ValueError, match="shared"):
        plan.dvc_yaml([one, two], params={})


def test_code_command_writes_digests_sha256sum_checks_without_reading_params(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    Path("a.py").write_text("x = 1\n")
    Path("b.py").write_text("y = 2\n")
    assert cli.main(["code", "train", "a.py", "b.py"]) == 0
    out = tmp_path / paths.code_digests("train")
    assert subprocess.run(["sha256sum", "--check", "--quiet", str(out)]).returncode == 0
    assert out.read_text().splitlines()[1].endswith("  b.py")
    Path("b.py").write_text("y = 3\n")
    assert subprocess.run(["sha256sum", "--check", "--status", str(out)]).returncode != 0
    assert cli.main(["code", "train", "a.py", "gone.py"]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == "tdiag: error: cannot read source file gone.py: No such file or directory"
    assert cli.main(["code", "../up", "a.py"]) == cli.EXIT_USER_ERROR  # a name, never a path


def test_the_snakemake_code_digest_follows_contents_not_file_times(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.py").write_text("x = 1\n")
    code = Code("c", ("a.py",))
    before = code.digest()
    os.utime("a.py", (1, 1))
    assert code.digest() == before
    Path("a.py").write_text("x = 2\n")
    assert code.digest() != before
