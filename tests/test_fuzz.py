"""Malformed configurations and overrides: each is one line naming the key, exit code 2.

The cases are data (tests/fuzz/README.md): every one goes through the real CLI entry
point in-process, and a few through a `tdiag` subprocess, so no traceback can hide in
how the error reaches the terminal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_params, write_params
from tdiag import cli
from tdiag.config import ConfigError, deep_merge, load, overrides_from_mapping, validate
from tdiag.report.collect import UnfinishedStudy, write_study_table

FUZZ = Path(__file__).parent / "fuzz"
CONFIGS = sorted((FUZZ / "configs").glob("*.yaml"))
WHOLE = "# whole file"


def _overrides() -> list[tuple[str, str]]:
    cases = []
    for line in (FUZZ / "overrides.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            expect, override = line.split(None, 1)
            cases.append((expect, override))
    return cases


OVERRIDES = _overrides()


def _expectation(case: Path) -> tuple[str, bool]:
    """The case's expected key path, and whether the file is the whole params file."""
    first, second = (case.read_bytes().split(b"\n", 2) + [b""])[:2]
    expect = first.decode().removeprefix("# expect:").strip()
    assert first.decode().startswith("# expect:") and expect, f"{case.name}: line 1 must be '# expect: <key path>'"
    return expect, second.decode(errors="replace").strip() == WHOLE


def _params_for(case: Path, folder: Path) -> Path:
    _, whole = _expectation(case)
    if whole:
        path = folder / "params.yaml"
        path.write_bytes(case.read_bytes())
        return path
    return write_params(folder, deep_merge(tiny_params(), yaml.safe_load(case.read_text()) or {}))


def _assert_refused(code: int, err: str, expect: str, folder: Path, out: str = "") -> None:
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"not one line: {err!r}"
    assert lines[0].startswith("tdiag: error: ")
    named = expect if expect.startswith("params.yaml") else f"'{expect}'"
    assert named in lines[0], f"{named} not in {lines[0]!r}"
    assert "Traceback" not in err + out
    assert not (folder / "results").exists()


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--params", "params.yaml", *args])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def test_there_are_enough_cases():
    assert len(CONFIGS) >= 60 and len(OVERRIDES) >= 15


@pytest.mark.parametrize("case", CONFIGS, ids=lambda p: p.stem)
def test_malformed_config_is_one_line_naming_the_key(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _params_for(case, tmp_path)
    _assert_refused(*_run(capsys, "validate")[:2], _expectation(case)[0], tmp_path)


@pytest.mark.parametrize("expect, override", OVERRIDES, ids=[o for _, o in OVERRIDES])
def test_malformed_override_is_one_line_naming_the_key(expect, override, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    _assert_refused(*_run(capsys, "--set", override, "validate")[:2], expect, tmp_path)


SUBPROCESS_CASES = ["whole-binary", "whole-duplicate-study", "grid-vary-bad-value", "size-d-model"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_no_traceback_reaches_a_real_terminal(name, tmp_path):
    case = FUZZ / "configs" / f"{name}.yaml"
    _params_for(case, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "tdiag", "--params", "params.yaml", "train", "toy", "copy"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    _assert_refused(done.returncode, done.stderr, _expectation(case)[0], tmp_path, done.stdout)


def test_bad_override_yaml_in_a_real_terminal(tmp_path):
    write_params(tmp_path, tiny_params())
    done = subprocess.run(
        [sys.executable, "-m", "tdiag", "--set", "studies.toy.train.lr=[1", "validate"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    _assert_refused(done.returncode, done.stderr, "studies.toy.train.lr", tmp_path, done.stdout)


# ------------------------------------------------------- one test per named hole


def _message(raw: dict, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw, list(overrides), env={})
    assert "\n" not in str(info.value)
    return str(info.value)


def test_duplicate_key_names_its_path_and_line(tmp_path):
    text = yaml.safe_dump(tiny_params(), sort_keys=False)
    lines = text.splitlines()
    at = lines.index("    train:", lines.index("  toy:")) + 1  # the first key of studies.toy.train
    lines.insert(at, lines[at])
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    key = lines[at].split(":")[0].strip()
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value) == f"{path} line {at + 2}: duplicate key 'studies.toy.train.{key}'"


def test_duplicate_key_through_an_anchor_merge_is_allowed(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: &b {scale: smoke}\n<<: *b\nscale: full\n")
    # `scale` given after a `<<` merge that also sets it overrides it, as YAML intends:
    # the file gets past parsing to the schema, which misses its sections.
    with pytest.raises(ConfigError, match="missing key 'datasets'"):
        load(path, env={})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_infinities_are_refused_like_nan(value):
    raw = tiny_params()
    raw["studies"]["toy"]["train"]["lr"] = value
    assert "'studies.toy.train.lr'" in _message(raw) and "finite" in _message(raw)


def test_absurd_size_is_one_line_before_anything_is_built():
    raw = tiny_params({"studies": {"toy": {"model": {"d_model": 10**12, "n_heads": 1}}}})
    assert _message(raw) == (
        "bad value 1000000000000 for 'studies.toy.model.d_model': Input should be less than or equal to 65536"
    )


def test_grid_errors_name_the_vary_and_overrides_paths_written():
    raw = tiny_params()
    raw["studies"]["toy"]["grids"]["qk_wo"]["vary"]["model.init.tie"] = ["none", "maybe"]
    assert "'studies.toy.grids.qk_wo.vary.model.init.tie[1]'" in _message(raw)
    raw = tiny_params()
    raw["studies"]["toy"]["grids"]["qk_wo"]["overrides"] = {"train": {"lrr": 1}}
    assert "unknown key 'studies.toy.grids.qk_wo.overrides.train.lrr'" in _message(raw)


def test_grid_check_across_keys_blames_the_part_that_fails():
    # warmup_steps 0 fails only with the varied value: the vary path is named,
    # not the grid's overrides, which set another key of the same section.
    raw = tiny_params()
    raw["studies"]["toy"]["grids"]["w"] = {"overrides": {"train": {"max_steps": 10}}, "vary": {"train.warmup_steps": [0]}}
    assert _message(raw).startswith("'studies.toy.grids.w.vary.train.warmup_steps[0]': schedule 'noam'")
    raw["studies"]["toy"]["grids"]["w"] = {"overrides": {"train": {"epochs": 2}}, "vary": {"train.lr": [0.5]}}
    assert _message(raw).startswith("'studies.toy.grids.w.overrides.train': set exactly one")


def test_betas_element_in_a_scale_section_names_the_scale_path():
    raw = tiny_params({"scales": {"smoke": {"studies": {"toy": {"train": {"betas": [0.9, "x"]}}}}}})
    del raw["studies"]["toy"]["train"]["betas"]  # held per scale, not in the common study
    assert "'scales.smoke.studies.toy.train.betas.1'" in _message(raw)


def test_binary_file_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"scale: auto\n" + bytes(range(256)))
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value) == f"{path} line 3: not a UTF-8 text file (byte 0x80)"  # \x0a ends line 2


@pytest.mark.parametrize("override", ["studies.toy.train.lr=[1", "studies.toy.train.lr={a: [}"])
def test_set_value_that_is_not_yaml_is_one_line(override):
    message = _message(tiny_params(), [override])
    assert message.startswith(f"override '{override}': not valid YAML in the value of 'studies.toy.train.lr'")


def test_snakemake_config_value_that_is_not_yaml_is_one_line():
    # Snakemake hands `--config 'studies={toy: [}'` over as the string it could not parse.
    overrides = overrides_from_mapping({"studies": "{toy: [}"})
    assert _message(tiny_params(), overrides).startswith("override 'studies={toy: [}': not valid YAML")


def test_collect_on_an_unfinished_study_names_the_missing_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    code, err, _ = _run(capsys, "collect", "toy")
    _assert_refused(code, err, "toy", tmp_path)
    assert "copy, dates, qk_wo-1, qk_wo-2" in err
    with pytest.raises(UnfinishedStudy):
        write_study_table(validate(tiny_params(), env={}), "toy", tmp_path)
