"""A stage's code dependencies are derived from the import statements, never hand-kept:
editing any module a stage's command runs reruns the stage, and a finished seed is kept
only for the code that made it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from tdiag import config, plan, stage
from tdiag.stage import code_digest, notebook_modules, source_files
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


def test_every_module_a_training_command_loads_is_a_dependency_of_its_stage(tiny_project):
    """Run a real `tdiag train` and list the tdiag modules it imported: each must be a
    dependency of the training stage (only the command-line front is not)."""
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
    deps = {Path(d).relative_to("src/tdiag").as_posix() for d in stages["train_toy_copy"].deps if d.startswith("src/")}
    assert used and used <= deps, f"loaded but not a dependency: {sorted(used - deps)}"


def test_a_report_stage_depends_on_what_its_notebook_imports():
    imported = notebook_modules(REPO / "notebooks" / "lm.ipynb")
    assert "report/language_model.py" in imported and "report/figures.py" in imported
    stages = {s.name: s for s in plan.stages(config.load(REPO / "params.yaml"))}
    assert "src/tdiag/report/language_model.py" in stages["report_lm"].deps
    assert "src/tdiag/report/language_model.py" not in stages["report_toy"].deps
    assert "src/tdiag/report/render.py" in stages["report_toy"].deps
    template = REPO / "src/tdiag/report/templates/offline"  # the page's look: a change redoes the page
    assert {f"src/tdiag/report/templates/offline/{f.name}" for f in template.iterdir()} <= set(stages["report_toy"].deps)


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
