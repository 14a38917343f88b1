"""The model checks as pipeline stages (plan.py: one `tdiag check` per distinct model of a
study) and as a section of the study page (report/model_checks.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_params, write_params
from tdiag import atomic, config, paths, plan
from tdiag.report import model_checks


def _stages(tmp_path: Path) -> dict:
    cfg = config.load(write_params(tmp_path, tiny_params()))
    return cfg, {stage.name: stage for stage in plan.stages(cfg)}


def test_each_distinct_model_of_a_study_is_checked_once_before_its_page(tmp_path: Path):
    """The tiny toy study: copy and dates differ by dataset; the qk_wo grid's untied variant
    is the copy run's model (same dataset, same model section), its tied one is not."""
    cfg, stages = _stages(tmp_path)
    assert plan.checked_runs(cfg, "toy") == ["copy", "dates", "qk_wo-2"]
    for run in ("copy", "dates", "qk_wo-2"):
        stage = stages[f"check_toy_{run.replace('-', '_')}"]
        assert stage.args == ("check", "toy", run)
        assert stage.outs == (str(paths.run_checks("toy", run)),)
        assert str(paths.run_checks("toy", run)) in stages["report_toy"].deps
        assert "src/tdiag/checks/suite.py" in stage.code.files
    assert "check_toy_qk_wo_1" not in stages
    # A language-model run and its dataset: the check reads the prepared data.
    lm = stages["check_lm_01_lstm_1l_adam"]
    assert any(dep.startswith("results/data/wikitext2/") for dep in lm.deps)


def test_the_page_section_shows_each_check_and_names_the_bug_of_each_failure(tmp_path: Path):
    passing = {"name": "causality", "passed": True, "measured": 0.0, "threshold": 1e-9, "message": "moved at most 0"}
    failing = {"name": "gradient_flow", "passed": False, "measured": 68.0, "threshold": 0.0,
               "message": "blocked gradient: 68 of 94 parameters get no gradient"}
    for run, checks in (("copy", [passing]), ("qk_wo-2", [passing, failing])):
        atomic.write_json(tmp_path / paths.run_checks("toy", run),
                          {"run": run, "passed": all(c["passed"] for c in checks), "checks": checks})
    section = model_checks.section_html(model_checks.read(tmp_path, "toy"))
    assert "1 of 2 checked models pass every check" in section
    assert section.count("<tr>") == 3 and "<th>gradient flow</th>" in section
    assert "<b>FAIL</b>" in section and "blocked gradient: 68 of 94 parameters get no gradient" in section
    assert section.index("copy") < section.index("qk_wo-2")
    assert "No model of this study was checked" in model_checks.section_html(model_checks.read(tmp_path, "lm"))
