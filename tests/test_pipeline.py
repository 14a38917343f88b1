"""One stage list, two orchestrators: dvc.yaml stays generated from it, and the helpers
with which the whole tiny pipeline is run and checked through real Snakemake
(test_snakemake.py, killed and finished) and real DVC (test_dvc.py, `dvc repro`) in a
temporary copy of the project: each orchestrator runs it once in the test command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from browser import assert_pages_work, chromium
from conftest import REPO, tiny_params, write_params
from tdiag import config, plan
from tdiag.config import yaml_text
from tdiag.report.lab import EXPERIMENTS

PROJECT_FILES = ("workflow", "notebooks", "src", "examples", "claims.yaml", "dvc.yaml", ".dvc", ".dvcignore", ".gitignore")
OWN_MODEL = {"own_models": {"mine": {"factory": "examples/custom_model/good_gpt.py:build", "replaces": "gpt",
                                     "studies": {"lm": "all"}}}}
"""The Snakemake run (test_snakemake.py) trains the example GPT beside the lm study's GPT run."""


def test_committed_dvc_yaml_is_generated_from_the_stage_list():
    cfg = config.load(REPO / "params.yaml")
    expected = plan.dvc_file(cfg, yaml_text.read(REPO / "params.yaml"))
    assert (REPO / "dvc.yaml").read_text() == expected, "regenerate with: tdiag stages --dvc > dvc.yaml"


def test_stage_list_does_not_depend_on_scale():
    smoke = plan.stages(config.load(REPO / "params.yaml", ["scale=smoke"]))
    full = plan.stages(config.load(REPO / "params.yaml", ["scale=full"]))
    assert smoke == full  # fingerprints differ, but they are not compared


def test_every_stage_input_is_made_by_an_earlier_stage_or_is_source():
    made: set[str] = set()
    for stage in plan.stages(config.load(REPO / "params.yaml")):
        for dep in stage.deps:
            assert dep in made or (REPO / dep).is_file(), f"{stage.name}: nothing makes {dep}"
        assert stage.code, f"{stage.name}: a tdiag command without its source files"
        for source in stage.code.files:
            assert source.startswith("src/tdiag/") and (REPO / source).is_file(), f"{stage.name}: {source}"
        made.update(stage.outs)


def _project_copy(tmp_path: Path, extra: dict | None = None) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        elif source.exists():
            shutil.copy2(source, project / name)
    write_params(project, tiny_params(extra))
    # DVC runs what its dvc.yaml lists: the tiny configuration's stages, generated as the committed file is.
    (project / "dvc.yaml").write_text(plan.dvc_file(config.load(project / "params.yaml"),
                                                    yaml_text.read(project / "params.yaml")))
    return project


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _check_outputs(project: Path) -> None:
    """Every configured study's page (test_dvc.py's project has no lab) and the index."""
    studies = list(config.load(project / "params.yaml").studies)
    result = json.loads((project / "results/runs/toy/copy/summary.json").read_text())
    assert result["status"] == "completed"
    page = (project / "reports/toy.html").read_text()
    assert "data:image/png;base64" in page
    assert not re.search(r'(src|href)="https?://', page), "the page must not load anything from the network"
    assert "injected-parameters" not in page
    index = (project / "reports/index.html").read_text()
    assert "toy.html" in index and "Scale" in index and "torch" in index
    translation = json.loads((project / "results/runs/wmt14/overfit/summary.json").read_text())["per_seed"][0]
    assert translation["status"] == "completed" and "tok:13a" in translation["train"]["bleu_signature"]
    page = (project / "reports/wmt14.html").read_text()
    assert "data:image/png;base64" in page and "not comparable" in page.lower()
    assert "wmt14.html" in index
    lm = json.loads((project / "results/runs/lm/01-lstm-1l-adam/summary.json").read_text())["per_seed"][0]
    assert lm["status"] == "completed" and lm["best_valid"]["metric"] == "perplexity"
    page = (project / "reports/lm.html").read_text()
    assert "data:image/png;base64" in page and "WikiText-2 (offline re-split)" in page
    assert "lm.html" in index
    if "lab" in studies:
        page = (project / "reports/lab.html").read_text()
        for grid in EXPERIMENTS:  # every section, each with its figure and its computed finding
            assert f'id="{grid}"' in page
        assert page.count("Finding:") == len(EXPERIMENTS) and "data:image/png;base64" in page
        assert "fp16 was not run: fp16 with a grad scaler needs a CUDA device" in page
        assert "lab.html" in index
    assert studies[:3] == ["toy", "wmt14", "lm"], studies
    for study in studies:  # each page opens with its claims, judged from its runs
        page = (project / f"reports/{study}.html").read_text()
        judged = json.loads((project / f"results/{study}/verdicts.json").read_text())
        verdicts, beside = judged["verdicts"], sum(len(v) for v in judged["own_models"].values())
        assert verdicts and page.count("runs read:") == len(verdicts) + beside, study
        assert page.index("Verdicts:") < page.index("<img"), f"{study}: verdicts come before the first figure"
        checked = len(list((project / f"results/checks/{study}").glob("*.json")))
        assert checked and f"of {checked} checked models pass every check" in page, study
    assert "headline result" in index and "The references' claims (claims.yaml), judged from these runs" in index
    if (project / "results/runs/lm/06-gpt-1l-adamw.mine/summary.json").exists():  # OWN_MODEL
        page = (project / "reports/lm.html").read_text()
        assert "examples/custom_model/good_gpt.py:build</code> in place of the reference's gpt" in page
        assert "Claims with mine:" in page and "06-gpt-1l-adamw.mine" in page
        assert "loss curves, reference and mine" in page
        beside = json.loads((project / "results/lm/verdicts.json").read_text())["own_models"]["mine"]
        assert beside and all("06-gpt-1l-adamw.mine" in v["reads"] for v in beside)
        assert json.loads((project / "results/checks/lm/06-gpt-1l-adamw.mine.json").read_text())["passed"]
    binary = chromium()  # without one, test_browser.py reports the pages unchecked (CI requires one)
    if binary:
        pages = sorted((project / "reports").glob("*.html"))
        assert len(pages) == len(studies) + 1  # and the index
        assert_pages_work(pages, binary)  # each opens offline in a browser: text, images decode, no request out
