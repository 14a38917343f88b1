"""The user's own model beside the reference (params.yaml `own_models`): every selected
run of the model it replaces gets a twin with the same data, seeds and settings; the
stages track the model's section and source file; bad entries are one line naming the
key; the claims are judged with the twins in place of the runs they replace."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, tdiag
from tdiag import config, plan
from tdiag.config import ConfigError, yaml_text
from tdiag.report import twins
from tdiag.report.claim_rules import CONTRADICTED, REPRODUCED, Compare, StudyResults, judge, selections

FACTORY = "examples/custom_model/good_gpt.py:build"


def _raw(**own) -> dict:
    raw = yaml_text.read(REPO / "params.yaml")
    raw["own_models"] = {"mine": {"factory": FACTORY, "replaces": "gpt", **own}}
    return raw


def _load(raw: dict) -> config.Config:
    return config.validate(raw, folder=REPO)


def test_every_run_of_the_replaced_model_gets_a_twin_with_the_reference_settings():
    cfg = _load(_raw())
    plain = config.load(REPO / "params.yaml")
    gpt_runs = [r for r in plain.run_names("lm") if plain.run("lm", r).model.arch == "gpt"]
    assert gpt_runs and [r for r in cfg.run_names("lm") if "." in r] == [f"{r}.mine" for r in gpt_runs]
    assert not [r for r in cfg.run_names("toy") if "." in r]  # toy trains encoder-decoders only
    for run in gpt_runs:
        reference, twin = cfg.run("lm", run), cfg.run("lm", f"{run}.mine")
        assert (twin.own_model, twin.reference_run) == ("mine", run)
        assert twin.model.arch == "custom" and twin.model.factory == FACTORY and twin.model.folder == REPO
        assert (twin.model.n_layers, twin.model.d_model, twin.model.dropout) == (
            reference.model.n_layers, reference.model.d_model, reference.model.dropout)
        assert (twin.train, twin.dataset, twin.seeds) == (reference.train, reference.dataset, reference.seeds)
        # The reference run is what it was without own_models: same dump, digest, stage fingerprint.
        assert reference.model_dump(mode="json") == plain.run("lm", run).model_dump(mode="json")
        assert "own_model" not in reference.model_dump(mode="json")
        assert reference.digest() == plain.run("lm", run).digest() != twin.digest()


def test_studies_picks_runs_and_grids_and_checkpointed_runs_are_not_twinned():
    cfg = _load(_raw(studies={"lab": ["norm_warmup", "checkpointing"]}))
    assert not [r for r in cfg.run_names("lm") if "." in r]
    twins = [r for r in cfg.run_names("lab") if "." in r]
    lab = config.load(REPO / "params.yaml")
    wanted = [r for r in lab.run_names("lab") if lab.run("lab", r).grid == "norm_warmup"
              or (lab.run("lab", r).grid == "checkpointing" and lab.run("lab", r).model.checkpointing == "none")]
    assert twins == [f"{r}.mine" for r in wanted]
    assert any(lab.run("lab", r).model.checkpointing != "none" for r in lab.run_names("lab"))
    everything = _load(_raw(studies={"lm": "all"}))
    assert len([r for r in everything.run_names("lm") if "." in r]) == 6


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        _load(raw)
    return str(err.value)


@pytest.mark.parametrize("own, message", [
    ({"studies": {"nope": "all"}}, "unknown study 'nope' in 'own_models.mine.studies.nope'; studies: toy, wmt14, lm, lab"),
    ({"studies": {"lab": ["norm_warmup", "nope"]}}, "bad value 'nope' for 'own_models.mine.studies.lab[1]'; allowed: "
                                                   "'all', or the study's grids attention_length, checkpointing"),
    ({"studies": {"lm": "some"}}, "own_models.mine.studies.lm"),
    ({"studies": {"lm": ["01-lstm-1l-adam"]}}, "'own_models.mine.studies.lm[0]': '01-lstm-1l-adam' trains lstm models, "
                                               "none of them the gpt (without activation checkpointing) that "
                                               "'own_models.mine.replaces' names: nothing to stand beside"),
    ({"studies": {"toy": "all"}}, "'own_models.mine.studies.toy': study 'toy' trains encoder_decoder models, none of"),
    ({"studies": {"lab": ["checkpointing"]}, "replaces": "lstm"}, "'own_models.mine.studies.lab[0]': 'checkpointing' "
                                                                  "trains gpt models, none of them the lstm"),
    ({"replaces": "transformer"}, "own_models.mine.replaces"),
    ({"factory": "no_colon.py"}, "own_models.mine.factory"),
    ({"colour": "red"}, "unknown key 'own_models.mine.colour'"),
])
def test_a_bad_own_model_entry_names_its_key(own, message):
    assert message in _error(_raw(**own))


def test_own_model_names_hold_no_dot_and_computed_keys_are_refused_in_the_file():
    raw = _raw()
    raw["own_models"]["my.gpt"] = raw["own_models"].pop("mine")
    assert "bad name 'my.gpt'; own_models names may not hold '.'" in _error(raw)
    raw = yaml_text.read(REPO / "params.yaml")
    raw["studies"]["lm"]["runs"]["05-gpt-1l-adam"]["own_model"] = "x"
    assert "unknown key 'studies.lm.runs.05-gpt-1l-adam.own_model' (it is computed, not set)" in _error(raw)


def test_a_twin_name_taken_by_a_run_is_refused():
    raw = _raw(studies={"lm": "all"})
    raw["studies"]["lm"]["runs"]["05-gpt-1l-adam.mine"] = {"model": {"arch": "lstm"}}
    assert "its twin of run '05-gpt-1l-adam' would be named '05-gpt-1l-adam.mine', which study 'lm' already has" in _error(raw)


def test_a_bad_entry_through_the_cli_is_one_line_and_exit_2(tmp_path: Path):
    raw = _raw(studies={"lm": ["nope"]})
    raw["own_models"]["mine"]["factory"] = str(REPO / "examples/custom_model/good_gpt.py") + ":build"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    done = tdiag("validate", cwd=tmp_path, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "own_models.mine.studies.lm[0]" in done.stderr


def test_a_twins_stages_track_its_section_the_reference_entry_and_its_source():
    raw = _raw(studies={"lm": "all", "lab": ["norm_warmup"]})
    cfg = _load(raw)
    stages = {s.name: s for s in plan.stages(cfg)}
    train = stages["train_lm_05_gpt_1l_adam_mine"]
    assert train.args == ("train", "lm", "05-gpt-1l-adam.mine")
    assert {"studies.lm.runs.05-gpt-1l-adam", "own_models.mine"} <= set(train.params)
    assert str(REPO / "examples/custom_model/good_gpt.py") in train.deps
    grid_twin = stages["train_lab_norm_warmup_1_mine"]
    assert "studies.lab.grids.norm_warmup" in grid_twin.params
    assert "check_lm_05_gpt_1l_adam_mine" in stages  # its model checks
    report = stages["report_lm"]
    assert "results/runs/lm/05-gpt-1l-adam.mine/summary.json" in report.deps
    assert "own_models.mine" in plan.dvc_params(train.params, raw)


# ------------------------------------------------------------ claims beside the reference


def _frames(names: list[str], arch: dict[str, str], final: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.DataFrame([{"run": r, "seed": 0, "grid": None, "status": "completed", "scale": "smoke", "steps": 10,
                          "diverged_step": None, "config.model.arch": arch[r], "config.train.eval_every": 10,
                          "valid.loss": final[r]} for r in names])
    records = pd.DataFrame([{"run": r, "seed": 0, "kind": "eval", "split": "valid", "step": 10, "loss": final[r]}
                            for r in names])
    return runs, records


def test_twins_replace_the_runs_they_stand_beside_and_are_selected_as_them():
    reference, ref_records = _frames(["lstm", "gpt"], {"lstm": "lstm", "gpt": "gpt"}, {"lstm": 5.0, "gpt": 4.0})
    own, own_records = _frames(["gpt.mine"], {"gpt.mine": "custom"}, {"gpt.mine": 6.0})
    twinned = {"gpt.mine": "gpt"}
    runs = twins.beside_reference(reference, own, twinned)
    assert sorted(runs["run"]) == ["gpt", "lstm"] and float(runs.loc[runs["run"] == "gpt", "valid.loss"].iloc[0]) == 6.0
    view = StudyResults(Path("."), "lm", runs, twins.beside_reference(ref_records, own_records, twinned),
                        own_model="mine", twinned=twinned, design=reference)
    rule = Compare.model_validate({
        "kind": "compare", "first": {"where": {"model.arch": "gpt"}}, "second": {"where": {"model.arch": "lstm"}},
        "measure": {"kind": "best", "metric": "loss"}, "expect": "lower"})
    plain = StudyResults(Path("."), "lm", reference, ref_records)
    assert judge(rule, plain).verdict == REPRODUCED  # the reference's GPT: 4.0 < 5.0
    judged = judge(rule, view)  # selected as the GPT run (its own arch is 'custom'), measured on its own curve
    assert judged.verdict == CONTRADICTED and "gpt.mine 6" in judged.numbers
    assert selections(rule, view) == ["gpt", "lstm"] and view.replaced() == {"gpt"}


def test_runs_that_train_identically_across_a_varied_model_key_name_the_key_the_factory_ignores():
    reference = pd.DataFrame([{"run": r, "config.model.norm": norm, "config.model.n_layers": 2}
                              for r, norm in (("pre", "pre"), ("post", "post"), ("deep", "pre"))])
    reference.loc[2, "config.model.n_layers"] = 4
    own = pd.DataFrame([{"run": f"{r}.mine", "reference_run": r} for r in ("pre", "post", "deep")])
    records = pd.DataFrame([{"run": f"{r}.mine", "seed": 0, "kind": "train", "step": step, "loss": loss}
                            for r, losses in (("pre", [3.0, 2.5]), ("post", [3.0, 2.5]), ("deep", [3.0, 2.4]))
                            for step, loss in enumerate(losses, start=1)])
    assert twins.unread_model_keys(reference, own, records) == [(["post.mine", "pre.mine"], ["model.norm"])]
    records.loc[records["run"] == "post.mine", "loss"] = [3.0, 2.6]  # it reads norm after all
    assert twins.unread_model_keys(reference, own, records) == []


# ----------------------------------------------------------------- end to end, on the toy study


@pytest.mark.slow
def test_an_encoder_decoder_of_your_own_trains_beside_the_toy_run_and_the_page_sets_them_side_by_side(tmp_path: Path):
    """A seq2seq model in a file beside params.yaml, through train, check, collect and
    report: the toy page judges the toy claims with it and shows both runs."""
    from test_custom_model import GOOD_FACTORY, SEQ2SEQ
    from conftest import tiny_params, write_params

    (tmp_path / "my_model.py").write_text(SEQ2SEQ + GOOD_FACTORY)
    shutil.copy2(REPO / "claims.yaml", tmp_path / "claims.yaml")
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    params = tiny_params({"own_models": {"mine": {"factory": "my_model.py:build", "replaces": "encoder_decoder",
                                                  "studies": {"toy": "all"}}}})
    toy = params["studies"]["toy"]
    toy["runs"], toy["grids"] = {"copy": {"dataset": "copy"}}, {}
    toy["train"].update(max_steps=30, eval_every=15)
    params["studies"] = {"toy": toy}
    write_params(tmp_path, params)
    tdiag("data", "synth", "copy", cwd=tmp_path)
    for run in ("copy", "copy.mine"):
        tdiag("train", "toy", run, "--threads", "1", cwd=tmp_path)
        tdiag("check", "toy", run, cwd=tmp_path)
    tdiag("collect", "toy", cwd=tmp_path)
    tdiag("report", "toy", cwd=tmp_path)
    page = (tmp_path / "reports/toy.html").read_text()
    assert "my_model.py:build</code> in place of the reference's encoder_decoder" in page
    assert "Its model checks all pass on its checked run" in page
    assert "Claims with mine:" in page and "copy.mine" in page and "loss curves, reference and mine" in page
    judged = yaml.safe_load((tmp_path / "results/toy/verdicts.json").read_text())
    [tasks] = [v for v in judged["own_models"]["mine"] if v["claim_id"] == "toy-tasks-learnt"]
    assert tasks["reads"] == ["copy.mine"] and "copy.mine (30 steps)" in tasks["numbers"]
    table = pd.read_csv(tmp_path / "results/toy/runs.csv")
    assert set(table["run"]) == {"copy", "copy.mine"}
