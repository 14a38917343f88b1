"""claims.yaml and its rules: the committed file reads runs the committed configuration
has, a bad file is one line naming the key, and each rule gives the verdict its
numbers call for (reproduced / not reproduced / contradicted / inconclusive)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, tiny_params, write_params
from tdiag import config
from tdiag.report import claims
from tdiag.report.claim_rules import (
    CONTRADICTED, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, UNTESTABLE, AllOf, Compare, Select, StudyResults,
    Thresholds, judge,
)

COMMITTED = claims.load(REPO / "claims.yaml")


def _flat(prefix: str, obj) -> dict:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flat(f"{prefix}.{key}" if prefix else key, value).items()}
    return {prefix: obj}


def _configured_runs(cfg, study: str) -> pd.DataFrame:
    """One row per run of the configuration, as load_runs would give them (no results)."""
    rows = []
    for run in cfg.run_names(study):
        rc = cfg.run(study, run)
        rows.append({"run": run, "seed": 0, "grid": rc.grid, "status": "completed", "scale": cfg.resolved_scale,
                     **_flat("config", rc.model_dump(mode="json"))})
    return pd.DataFrame(rows)


def _selections(rule) -> list:
    if isinstance(rule, Compare):
        return [rule.first, rule.second]
    if isinstance(rule, Thresholds):
        return [rule.select]
    return [sel for part in rule.parts.values() for sel in _selections(part)]


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_every_selection_of_the_committed_claims_matches_runs_of_the_committed_params(scale):
    cfg = config.load(REPO / "params.yaml", [f"scale={scale}"])
    assert claims.unconfigured(COMMITTED, cfg) == []
    for name, claim in COMMITTED.claims.items():
        results = StudyResults(REPO, claim.study, _configured_runs(cfg, claim.study), pd.DataFrame())
        for sel in _selections(claim.rule):
            assert results.select(sel), f"claims.{name}: {sel} matches no run of study {claim.study} at {scale}"


def test_the_committed_claims_cover_every_study_and_the_issue_list():
    studies = {c.study for c in COMMITTED.claims.values()}
    assert studies == {"toy", "wmt14", "lm", "lab"}
    assert len(COMMITTED.claims) >= 17


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    return path


GOOD = """
claims:
  one:
    study: toy
    claim: c
    source: s
    rule:
      kind: compare
      first: {runs: [copy]}
      second: {runs: [reverse]}
      measure: {kind: steps_to}
      expect: lower
"""


@pytest.mark.parametrize("change, message", [
    (("expect: lower", "expect: sooner"), "bad value 'sooner' for 'claims.one.rule.expect'; allowed: 'lower', 'higher' or 'equal'"),
    (("measure: {kind: steps_to}", "measure: {kind: steps_to, metrik: bleu}"), "unknown key 'claims.one.rule.measure.metrik'"),
    (("kind: compare", "kind: versus"), "claims.one.rule.kind"),
    (("      second: {runs: [reverse]}\n", ""), "missing key 'claims.one.rule.second'"),
    (("first: {runs: [copy]}", "first: {}"), "a selection needs `runs`, `grid` or `where`"),
    (("  one:\n", "  bad name!:\n"), "'claims': bad name 'bad name!'"),
])
def test_a_bad_claims_file_is_one_line_naming_the_key(tmp_path: Path, change, message):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(claims.ClaimsError) as err:
        claims.load(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_validate_refuses_a_bad_claims_file_and_names_claims_of_studies_not_configured(tmp_path: Path):
    write_params(tmp_path, tiny_params())
    _write(tmp_path, GOOD.replace("expect: lower", "expect: sooner"))
    done = subprocess.run([sys.executable, "-m", "tdiag", "validate"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("tdiag: error: claims.yaml: bad value 'sooner' for 'claims.one.rule.expect'")
    _write(tmp_path, GOOD.replace("study: toy", "study: toys"))
    done = subprocess.run([sys.executable, "-m", "tdiag", "validate"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0
    assert "claims.yaml: 1 claims (1 of studies not configured, judged nowhere: one)" in done.stdout


# ------------------------------------------------------------- rules on numbers


def _results(curves: dict[str, list[float]], eval_every: int = 10, steps: int | None = None,
             status: dict[str, str] | None = None, **config) -> StudyResults:
    """Runs whose validation exact match at steps eval_every, 2*eval_every, ... is `curves[run]`."""
    runs, records = [], []
    for run, curve in curves.items():
        state = (status or {}).get(run, "completed")
        runs.append({"run": run, "seed": 0, "grid": "g", "status": state, "scale": "smoke",
                     "steps": steps or eval_every * len(curve), "diverged_step": 5 if state == "diverged" else None,
                     "config.train.eval_every": eval_every, "valid.loss": curve[-1],
                     **{f"config.{k}": v[run] for k, v in config.items()}})
        records.append({"run": run, "seed": 0, "kind": "eval", "split": "valid", "step": 0, "exact_match": 0.0})
        records += [{"run": run, "seed": 0, "kind": "eval", "split": "valid", "step": eval_every * (i + 1),
                     "exact_match": x} for i, x in enumerate(curve)]
    return StudyResults(Path("."), "toy", pd.DataFrame(runs), pd.DataFrame(records))


def _compare(**rule) -> Compare:
    base = {"kind": "compare", "first": {"runs": ["a"]}, "second": {"runs": ["b"]},
            "measure": {"kind": "steps_to"}, "expect": "lower"}
    return Compare.model_validate(base | rule)


@pytest.mark.parametrize("a, b, rule, verdict", [
    ([0.5, 1.0], [0.2, 0.5, 0.8, 1.0], {}, REPRODUCED),                   # step 20 vs 40
    ([0.2, 0.5, 0.8, 1.0], [0.5, 1.0], {}, CONTRADICTED),
    ([0.5, 0.8, 1.0], [0.2, 0.5, 1.0], {}, INCONCLUSIVE),                 # the same evaluation: not resolved
    ([0.5, 0.8, 1.0], [0.2, 0.5, 1.0], {"ties_reproduce": True}, REPRODUCED),
    ([1.0], [1.0], {}, INCONCLUSIVE),                                      # both at the first evaluation
    ([0.5, 1.0], [0.2, 0.5, 0.8, 1.0], {"ratio": 3}, NOT_REPRODUCED),     # 2x, not 3x
    ([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.1] * 7, {"ratio": 3}, REPRODUCED),  # b not by step 70: >= 3.5x
    ([0.5, 1.0], [0.1, 0.1, 0.1], {"ratio": 3}, INCONCLUSIVE),            # b not by 30: only >= 1.5x so far
    ([0.1, 0.1], [0.1, 0.1], {}, INCONCLUSIVE),                            # neither reached it
    ([0.1, 0.1, 0.1, 0.1], [0.5, 1.0], {}, CONTRADICTED),                 # a not by 40, b at 20
])
def test_compare_on_steps_to_a_threshold(a, b, rule, verdict):
    judged = judge(_compare(**rule), _results({"a": a, "b": b}))
    assert judged.verdict == verdict, judged.numbers


def test_compare_difference_tolerance_ties_and_equal():
    results = _results({"a": [0.30], "b": [0.95]})
    best = {"kind": "best", "metric": "exact_match"}
    assert judge(_compare(measure=best, difference=0.5), results).verdict == REPRODUCED
    assert judge(_compare(measure=best, difference=0.7), results).verdict == NOT_REPRODUCED
    assert judge(_compare(measure=best, expect="higher"), results).verdict == CONTRADICTED
    assert judge(_compare(measure=best, second_must_reach=0.99), results).verdict == INCONCLUSIVE
    final = {"kind": "final", "field": "valid.loss"}
    close = _results({"a": [0.300], "b": [0.295]})
    assert judge(_compare(measure=final, tolerance=0.01, ties_reproduce=True), close).verdict == REPRODUCED
    assert judge(_compare(measure=final, tolerance=0.01), close).verdict == NOT_REPRODUCED
    assert judge(_compare(measure=final, expect="equal", tolerance=0.01), close).verdict == REPRODUCED
    assert judge(_compare(measure=final, expect="equal", tolerance=0.001), close).verdict == CONTRADICTED


@pytest.mark.parametrize("checkpointed, plain, verdict", [
    (0.130, 0.100, REPRODUCED), (0.102, 0.100, NOT_REPRODUCED), (0.080, 0.100, CONTRADICTED), (None, None, INCONCLUSIVE),
])
def test_compare_reads_two_side_by_side_timings_of_one_run(checkpointed, plain, verdict):
    results = _results({"blocks": [1.0]})
    if checkpointed is not None:
        results.runs["side_by_side.checkpointed_seconds"] = checkpointed
        results.runs["side_by_side.plain_seconds"] = plain
    rule = _compare(first={"runs": ["blocks"], "label": "checkpointed"}, second={"runs": ["blocks"], "label": "plain"},
                    measure={"kind": "side_by_side", "timed": "checkpointed"},
                    second_measure={"kind": "side_by_side", "timed": "plain"}, expect="higher", relative_tolerance=0.05)
    judged = judge(rule, results)
    assert judged.verdict == verdict, judged.numbers
    if checkpointed is not None:
        assert judged.numbers.startswith("median forward and backward, timed side by side in one process: "
                                         f"checkpointed {checkpointed * 1000:.1f} ms; plain {plain * 1000:.1f} ms")
    with pytest.raises(ValueError, match="`second_measure` must be of the same kind"):
        _compare(second_measure={"kind": "step_time"}, measure={"kind": "side_by_side", "timed": "checkpointed"})


def test_a_diverged_run_has_no_value_and_says_why():
    judged = judge(_compare(), _results({"a": [1.0, 1.0], "b": [0.5, 1.0]}, status={"a": "diverged"}))
    assert judged.verdict == INCONCLUSIVE and "seed 0 diverged at step 5" in judged.numbers


def test_selection_by_config_values_lowest_and_group_aggregates():
    results = _results({"w1": [0.1, 0.2], "w2": [0.5, 1.0], "w3": [1.0, 1.0]},
                       **{"train.warmup_steps": {"w1": 25, "w2": 50, "w3": 100}, "model.init.tie": {"w1": "none", "w2": "qk", "w3": "qkv"}})
    assert results.select(Select(grid="g", lowest="train.warmup_steps")) == ["w1"]
    assert results.select(Select(where={"model.init.tie": ["qk", "qkv"]})) == ["w2", "w3"]
    assert results.select(Select(where={"model.init.tie": "qk"}, exclude=["w2"])) == []
    rule = _compare(first={"grid": "g", "lowest": "train.warmup_steps"}, second={"grid": "g", "aggregate": "max"},
                    measure={"kind": "final", "field": "valid.loss"}, difference=0.5)
    assert judge(rule, results).verdict == REPRODUCED  # 0.2 against the best final 1.0


def test_thresholds_within_the_claims_budget():
    rule = Thresholds.model_validate({"kind": "thresholds", "select": {"runs": ["a", "b"]}, "within_steps": 4000,
                                      "conditions": [{"measure": {"kind": "final", "field": "valid.loss"}, "at_least": 1.0}]})
    assert judge(rule, _results({"a": [1.0], "b": [1.0]})).verdict == REPRODUCED
    short = judge(rule, _results({"a": [1.0], "b": [0.5]}, steps=400))
    assert short.verdict == INCONCLUSIVE and "fewer steps than the claim's 4,000" in short.numbers
    assert judge(rule, _results({"a": [1.0], "b": [0.5]}, steps=4000)).verdict == NOT_REPRODUCED


def test_all_of_takes_the_worst_news():
    results = _results({"a": [0.5, 1.0], "b": [0.2, 0.5, 1.0]})
    win, lose = _compare().model_dump(), _compare(expect="higher").model_dump()
    same = _compare(first={"runs": ["a"]}, second={"runs": ["a"]},
                    measure={"kind": "final", "field": "valid.loss"}).model_dump()
    assert judge(AllOf.model_validate({"kind": "all_of", "parts": {"x": win, "y": win}}), results).verdict == REPRODUCED
    assert judge(AllOf.model_validate({"kind": "all_of", "parts": {"x": win, "y": same}}), results).verdict == NOT_REPRODUCED
    assert judge(AllOf.model_validate({"kind": "all_of", "parts": {"x": win, "y": lose}}), results).verdict == CONTRADICTED


def test_a_claim_above_the_runs_scale_is_inconclusive_and_says_what_the_rule_alone_says(tmp_path: Path, monkeypatch):
    text = GOOD + "    decided_at: full\n"
    loaded = claims.load(_write(tmp_path, text))
    results = _results({"copy": [0.5, 1.0], "reverse": [0.2, 0.5, 1.0]})
    monkeypatch.setattr(StudyResults, "load", classmethod(lambda cls, root, study, own_model=None: results))
    [verdict] = claims.judge_study(loaded, tmp_path, "toy")
    assert verdict.verdict == INCONCLUSIVE
    assert "the rule alone: reproduced; this claim needs the full scale's budget" in verdict.numbers
    assert verdict.reads == ["copy", "reverse"]
    loaded = claims.load(_write(tmp_path, GOOD))
    assert claims.judge_study(loaded, tmp_path, "toy")[0].verdict == REPRODUCED


def test_a_claim_comparing_twins_of_a_key_your_factory_ignores_is_not_testable_with_your_model(
        tmp_path: Path, monkeypatch):
    loaded = claims.load(_write(tmp_path, GOOD))
    results = _results({"copy": [0.5, 1.0], "reverse": [0.2, 0.5, 1.0]})
    results.own_model, results.twinned = "mine", {"copy.mine": "copy", "reverse.mine": "reverse"}
    monkeypatch.setattr(StudyResults, "load", classmethod(lambda cls, root, study, own_model=None: results))
    monkeypatch.setattr(StudyResults, "unread_model_keys",
                        lambda self: [(["copy.mine", "reverse.mine"], ["model.init.tie"])])
    [verdict] = claims.judge_study(loaded, tmp_path, "toy", "mine")
    assert verdict.verdict == UNTESTABLE and verdict.reads == ["copy.mine", "reverse.mine"]
    assert ("(the rule alone: reproduced; but copy.mine, reverse.mine trained identically: the factory does not "
            "read model.init.tie)") in verdict.numbers
    assert "#dde6f0" in claims.verdict_table_html([verdict])

    monkeypatch.setattr(StudyResults, "unread_model_keys", lambda self: [])  # the factory reads it
    assert claims.judge_study(loaded, tmp_path, "toy", "mine")[0].verdict == REPRODUCED


def test_verdicts_round_trip_and_their_table_names_every_claim(tmp_path: Path, monkeypatch):
    loaded = claims.load(_write(tmp_path, GOOD))
    monkeypatch.setattr(StudyResults, "load", classmethod(
        lambda cls, root, study, own_model=None: _results({"copy": [1.0], "reverse": [0.5, 1.0]})))
    claims.write_verdicts(loaded, tmp_path, "toy")
    stored = json.loads((tmp_path / "results/toy/verdicts.json").read_text())
    assert [v["verdict"] for v in stored["verdicts"]] == [REPRODUCED]
    back = claims.read_verdicts(tmp_path, "toy")
    assert claims.counts(back) == {REPRODUCED: 1, NOT_REPRODUCED: 0, CONTRADICTED: 0, INCONCLUSIVE: 0, UNTESTABLE: 0}
    table = claims.verdict_table_html(back)
    assert "<b>reproduced</b>" in table and "runs read: copy, reverse" in table and "1 reproduced" in table
