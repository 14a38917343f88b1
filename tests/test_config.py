"""params.yaml: loading, scale resolution, the mirror, one-line errors, overrides, the CLI edge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from conftest import tiny_params
from tdiag import cuda_probe, plan
from tdiag.config import (
    MIRROR_ENV,
    Config,
    ConfigError,
    RunConfig,
    apply_overrides,
    load,
    overrides_from_mapping,
    parse_override,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


@pytest.fixture
def raw() -> dict:
    """The committed params.yaml as a plain mapping, ready to be broken."""
    return yaml.safe_load(PARAMS.read_text())


def _error(raw: dict, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw, env={} if env is None else env)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    return message


def _write(tmp_path: Path, raw: dict, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------ loading


def test_committed_params_load_and_auto_follows_cuda():
    cfg = load(PARAMS, env={})
    assert cfg.scale == "auto"
    assert cfg.resolved_scale == ("full" if torch.cuda.is_available() else "smoke")
    assert cfg.run("toy", "copy").dataset == "copy"


@pytest.mark.parametrize("cuda, expected", [(False, "smoke"), (True, "full")])
def test_auto_scale_picks_the_section_by_cuda(raw, monkeypatch, cuda, expected):
    monkeypatch.setattr(cuda_probe, "cuda_available", lambda: cuda)
    cfg = load(PARAMS, env={})
    assert cfg.resolved_scale == expected
    wanted = raw["scales"][expected]["studies"]["toy"]["train"]["max_steps"]
    assert cfg.run("toy", "copy").train.max_steps == wanted


@pytest.mark.parametrize("scale, cuda", [("smoke", True), ("full", False)])
def test_explicit_scale_is_honoured_whatever_the_hardware(raw, monkeypatch, scale, cuda):
    monkeypatch.setattr(cuda_probe, "cuda_available", lambda: cuda)
    raw["scale"] = scale
    cfg = validate(raw, env={})
    assert cfg.scale == scale and cfg.resolved_scale == scale
    wanted = raw["scales"][scale]["studies"]["toy"]["train"]["max_steps"]
    assert cfg.run("toy", "copy").train.max_steps == wanted


def test_config_is_frozen():
    cfg = load(PARAMS, env={})
    with pytest.raises(ValidationError):
        cfg.scale = "full"
    with pytest.raises(ValidationError):
        cfg.run("toy", "copy").train.lr = 1.0


def test_resolved_scale_cannot_be_set_in_the_file(raw):
    raw["resolved_scale"] = "full"
    assert "resolved_scale" in _error(raw)


# ------------------------------------------------------------------- mirror


def test_mirror_env_var_sets_the_mirror(raw):
    cfg = validate(raw, env={MIRROR_ENV: "/somewhere/data"})
    assert cfg.data.mirror == "/somewhere/data"
    assert cfg.mirror == Path("/somewhere/data")


def test_mirror_from_file_when_env_var_absent(raw):
    raw["data"] = {"mirror": "/from/file"}
    assert validate(raw, env={}).mirror == Path("/from/file")
    assert validate(raw, env={MIRROR_ENV: ""}).mirror == Path("/from/file")


def test_mirror_env_var_wins_over_file(raw):
    raw["data"] = {"mirror": "/from/file"}
    assert validate(raw, env={MIRROR_ENV: "/from/env"}).mirror == Path("/from/env")


def test_committed_mirror_is_the_shared_folder_and_null_means_download(raw):
    assert validate(raw, env={}).mirror == Path("../shared/data")
    raw["data"]["mirror"] = None
    assert validate(raw, env={}).mirror is None


# ------------------------------------------------------------ one-line errors


def _set(raw: dict, dotted: str, value) -> dict:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


TRAIN_KEYS = ("optimizer", "lr", "warmup_steps", "max_steps")
MODEL_KEYS = ("d_model", "n_heads", "attention", "norm")


@pytest.mark.parametrize(
    "dotted, allowed",
    [
        ("scael", ("scale", "data", "datasets", "studies", "scales")),
        ("data.mirorr", ("mirror",)),
        ("studies.toy.train.optimzer", TRAIN_KEYS),
        ("studies.toy.model.init.tei", ("tie", "zero_wo")),
        ("studies.toy.runs.copy.model.n_head", MODEL_KEYS),
        ("studies.toy.runs.copy.modle", ("dataset", "model", "train")),
        ("datasets.copy.vocab_szie", ("vocab_size", "content_length", "n_train")),
        ("scales.smoke.studies.toy.train.max_stpes", TRAIN_KEYS),
        # the section not in use on this machine is checked too
        ("scales.full.studies.toy.train.max_stpes", TRAIN_KEYS),
        ("scales.smoke.studies.toy.model.n_head", MODEL_KEYS),
    ],
)
def test_misspelled_key_names_its_path_and_the_allowed_keys(raw, dotted, allowed):
    message = _error(_set(raw, dotted, 1))
    assert f"'{dotted}'" in message
    assert "allowed keys:" in message
    listed = message.split("allowed keys:")[1]
    for key in allowed:
        assert key in listed


def test_misspelled_key_in_a_scales_dataset_names_the_scales_path(raw):
    message = _error(_set(raw, "scales.full.datasets.copy.n_trian", 5))
    assert "'scales.full.datasets.copy.n_trian'" in message


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_misspelled_run_key_in_a_scales_section_names_the_scales_path(raw, scale):
    raw["scales"][scale]["studies"]["toy"]["runs"] = {"copy": {"model": {"n_head": 4}}}
    message = _error(raw)
    assert f"'scales.{scale}.studies.toy.runs.copy.model.n_head'" in message


@pytest.mark.parametrize(
    "dotted, value, allowed",
    [
        ("scale", "huge", ("auto", "smoke", "full")),
        ("studies.toy.train.optimizer", "adagrad", ("sgd", "momentum", "adam", "adamw")),
        ("studies.toy.train.schedule", "linear", ("noam", "cosine", "constant")),
        ("studies.toy.model.norm", "mid", ("pre", "post")),
        ("studies.toy.runs.copy.model.attention", "flash", ("manual", "sdpa")),
        ("scales.full.studies.wmt14.train.precision", "fp8", ("fp32", "bf16", "fp16")),
        ("datasets.copy.task", "sort", ("copy", "reverse")),
    ],
)
def test_bad_enum_value_lists_the_allowed_values(raw, dotted, value, allowed):
    message = _error(_set(raw, dotted, value))
    assert repr(value) in message
    assert dotted in message
    for option in allowed:
        assert f"'{option}'" in message.split("allowed:")[1]


@pytest.mark.parametrize("where", ["studies.toy.train", "studies.toy.runs.copy.train"])
def test_noam_without_warmup_is_refused(raw, where):
    message = _error(_set(raw, f"{where}.warmup_steps", 0))
    assert f"'{where}'" in message and "noam" in message and "warmup_steps" in message


def test_constant_schedule_without_warmup_is_accepted(raw):
    _set(raw, "studies.toy.train.schedule", "constant")
    _set(raw, "studies.toy.train.warmup_steps", 0)
    assert validate(raw, env={}).run("toy", "copy").train.warmup_steps == 0


@pytest.mark.parametrize("where", ["studies.toy.model", "studies.toy.runs.copy.model"])
def test_heads_must_divide_width(raw, where):
    message = _error(_set(raw, f"{where}.n_heads", 3))
    assert f"'{where}'" in message and "d_model (64)" in message and "n_heads (3)" in message


@pytest.mark.parametrize(
    "dotted, value",
    [
        ("scales.smoke.studies.toy.runs", {"copy": {}, "extra": {}}),
        ("scales.full.studies.toy.runs", {"copy": {}, "extra": {}}),
        ("scales.smoke.studies.other", {"dataset": "copy", "runs": {"a": {}}}),
        ("scales.full.datasets.copy2", {"task": "copy", "n_train": 10, "n_valid": 1, "n_test": 1}),
    ],
)
def test_scales_may_not_add_runs_studies_or_datasets(raw, dotted, value):
    message = _error(_set(raw, dotted, value))
    scale = dotted.split(".")[1]
    assert f"'scales.{scale}'" in message and "runs" in message


@pytest.mark.parametrize(
    "where, named",
    [
        ("studies.toy.dataset", "studies.toy.grids.warmup.dataset"),  # the grids use the study's dataset
        ("studies.toy.runs.copy.dataset", "studies.toy.runs.copy.dataset"),
    ],
)
def test_run_on_unknown_dataset_is_refused(raw, where, named):
    message = _error(_set(raw, where, "nope"))
    assert f"'{named}'" in message and "'nope'" in message
    assert message.endswith("allowed: " + ", ".join(raw["datasets"]))


@pytest.mark.parametrize(
    "where, metric, named, allowed",
    [
        ("scales.full.studies.toy.train", "perplexity", "scales.full.studies.toy.train.stop_when.metric",
         "loss, token_accuracy, exact_match, bleu"),
        ("studies.toy.runs.copy.train", "chrf", "studies.toy.runs.copy.train.stop_when.metric",
         "loss, token_accuracy, exact_match, bleu"),
        ("scales.full.studies.lm.train", "exact_match", "scales.full.studies.lm.train.stop_when.metric",
         "loss, perplexity"),
        ("studies.wmt14.train", "exact_match", "studies.wmt14.train.stop_when.metric",
         "loss, token_accuracy, bleu, chrf"),
    ],
)
def test_stop_when_names_a_metric_the_runs_dataset_reports(raw, where, metric, named, allowed):
    message = _error(_set(raw, f"{where}.stop_when", {"metric": metric, "at_least": 1.0}))
    assert f"bad value {metric!r} for '{named}'" in message and message.endswith(f"report: {allowed}")


def test_stop_when_takes_exactly_one_bound(raw):
    assert "set exactly one of at_least and at_most" in _error(
        _set(raw, "studies.wmt14.train.stop_when", {"metric": "bleu", "at_least": 90, "at_most": 99}))
    assert "set exactly one of at_least and at_most" in _error(
        _set(raw, "studies.wmt14.train.stop_when", {"metric": "bleu"}))


def test_more_examples_than_distinct_sequences_is_refused(raw):
    _set(raw, "datasets.copy.vocab_size", 5)  # 2 symbols, 2**4 = 16 sequences
    message = _error(raw)
    assert "'datasets.copy'" in message and "16 distinct" in message


def test_unknown_run_or_study_names_the_choices():
    cfg = load(PARAMS, env={})
    with pytest.raises(ConfigError, match=r"unknown study 'nope'; studies: toy"):
        cfg.run("nope", "copy")
    with pytest.raises(ConfigError, match=r"unknown run 'nope' in study 'toy'; runs: copy"):
        cfg.run("toy", "nope")
    with pytest.raises(ConfigError, match=r"unknown study 'nope'; studies: toy"):
        cfg.study("nope")


def _count_validations(monkeypatch) -> dict:
    """Count Config and RunConfig validations from now on."""
    counts = {Config: 0, RunConfig: 0}
    for model in counts:
        original = model.model_validate

        def spy(data, *args, _model=model, _original=original, **kwargs):
            counts[_model] += 1
            return _original(data, *args, **kwargs)

        monkeypatch.setattr(model, "model_validate", spy)
    return counts


def test_one_load_validates_each_mapping_once_and_runs_are_lookups(monkeypatch):
    counts = _count_validations(monkeypatch)
    cfg = load(PARAMS, ["scale=smoke"], env={})
    runs = [(study, run) for study in cfg.studies for run in cfg.run_names(study)]
    # The file, then each scale's merge: the committed full section restates the
    # file's values, so its merge is the file's mapping and is not validated again.
    assert counts[Config] == 2
    # Every run of the file, then again each run the smoke section changes.
    assert len(runs) < counts[RunConfig] <= 2 * len(runs)
    at_load = dict(counts)
    for study, run in runs * 2:
        cfg.run(study, run)
    plan.stages(cfg)
    assert counts == at_load


def test_a_config_without_scale_sections_validates_once(monkeypatch):
    raw = tiny_params()
    del raw["scales"]
    counts = _count_validations(monkeypatch)
    cfg = validate(raw, env={})
    assert counts[Config] == 1
    assert counts[RunConfig] == sum(len(cfg.run_names(study)) for study in cfg.studies)


def test_load_prefixes_errors_with_the_file(tmp_path, raw):
    path = _write(tmp_path, _set(raw, "studies.toy.train.optimzer", "adam"), "mine.yaml")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value).startswith(f"{path}: unknown key 'studies.toy.train.optimzer'")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("scale: auto\ndata:\n  mirror: null\n\tdevices: {}\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path} line 4: not valid YAML")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.yaml", env={})


# -------------------------------------------------------------------- grids


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_committed_grid_variants_are_all_distinct(scale):
    """Two runs of a study with the same resolved config would be a duplicated ablation."""
    cfg = load(PARAMS, [f"scale={scale}"], env={})
    for study_name, study in cfg.studies.items():
        digests = {name: cfg.run(study_name, name).digest() for name in study.run_overrides()}
        assert len(set(digests.values())) == len(digests), f"study {study_name}: duplicate runs"


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_committed_toy_grids_train_on_reverse_with_every_tying(scale):
    """The reference's ablations ran on reverse, with
    W_Q/W_K/W_V tied at init or not, crossed with W_O zeroed or not."""
    cfg = load(PARAMS, [f"scale={scale}"], env={})
    grid_runs = {name: cfg.run("toy", name) for name, (where, _) in cfg.studies["toy"].run_overrides().items()
                 if where.startswith("grids.")}
    assert sorted(grid_runs) == sorted(f"{grid}-{n}" for grid in ("warmup", "qk_wo", "embedding") for n in range(1, 7))
    assert {run.dataset for run in grid_runs.values()} == {"reverse"}
    inits = {(run.model.init.tie, run.model.init.zero_wo) for name, run in grid_runs.items() if name.startswith("qk_wo-")}
    assert inits == {(tie, zero) for tie in ("none", "qk", "qkv") for zero in (False, True)}


def test_linked_axis_sets_its_keys_together():
    cfg = load(PARAMS, ["scale=smoke"], env={})
    runs = {name: cfg.run("toy", name) for name in cfg.studies["toy"].run_overrides() if name.startswith("embedding-")}
    assert len(runs) == 6  # 2 embedding stds x (learned at 2 position stds, sinusoidal)
    sinusoidal = [run for run in runs.values() if run.model.positions == "sinusoidal"]
    assert len(sinusoidal) == 2
    assert all("model.init.position_std_ratio" not in run.variant for run in sinusoidal)
    learned_ratios = sorted(run.model.init.position_std_ratio for run in runs.values() if run.model.positions == "learned")
    assert learned_ratios == [0.7071, 0.7071, 1.0, 1.0]


def test_axis_mixing_mappings_and_values_is_refused(raw):
    raw["studies"]["toy"]["grids"]["embedding"]["vary"]["positions"].append("sinusoidal")
    message = _error(raw)
    assert "'studies.toy.grids.embedding.vary'" in message and "axis 'positions' mixes" in message


def test_linked_axis_with_unknown_key_names_it(raw):
    raw["studies"]["toy"]["grids"]["embedding"]["vary"]["positions"][0]["model.init.position_sd"] = 1.0
    message = _error(raw)
    assert "position_sd" in message


# ---------------------------------------------------------------- overrides


def test_overrides_parse_yaml_values_and_make_nested_keys():
    raw = {"a": {"b": 1}}
    out = apply_overrides(
        raw,
        [
            "a.b=3",
            "a.f=0.5",
            "a.t=true",
            "a.l=[1, 2]",
            "a.n=null",
            "a.s=hello",
            "a.eq=x=y",
            "a.empty=",
            "new.deep.key=7",
        ],
    )
    assert out == {
        "a": {"b": 3, "f": 0.5, "t": True, "l": [1, 2], "n": None, "s": "hello", "eq": "x=y", "empty": None},
        "new": {"deep": {"key": 7}},
    }
    assert raw == {"a": {"b": 1}}, "apply_overrides changed its input"


def test_override_later_wins():
    assert apply_overrides({}, ["a=1", "a=2"]) == {"a": 2}


@pytest.mark.parametrize(
    "text, fragment",
    [("novalue", "must look like key.path=value"), ("=3", "empty key"), ("a.b.c=1", "'b' is not a section")],
)
def test_bad_override_is_refused_in_one_line(text, fragment):
    with pytest.raises(ConfigError) as info:
        apply_overrides({"a": {"b": 1}}, [text])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_parse_override_splits_the_path():
    assert parse_override("studies.toy.train.lr=0.01") == (["studies", "toy", "train", "lr"], 0.01)


def test_overrides_reach_the_validated_config():
    cfg = load(
        PARAMS,
        ["studies.toy.train.lr=0.01", "studies.toy.runs.copy.train.betas=[0.8, 0.9]", "studies.toy.model.init.tie=qkv"],
        env={},
    )
    run = cfg.run("toy", "copy")
    assert run.train.lr == 0.01
    assert run.train.betas == (0.8, 0.9)
    assert run.model.init.tie == "qkv"


def test_override_can_choose_the_scale():
    assert load(PARAMS, ["scale=full"], env={}).resolved_scale == "full"


def test_misspelled_override_is_refused():
    with pytest.raises(ConfigError, match=r"unknown key 'studies\.toy\.train\.lrr'"):
        load(PARAMS, ["studies.toy.train.lrr=0.1"], env={})


def _edited(raw: dict, dotted: str, value) -> dict:
    """`raw` with one key set as an edit of the file (or `dvc exp run -S`) would."""
    return apply_overrides(raw, [f"{dotted}={yaml.safe_dump(value, default_flow_style=True).strip()}"])


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_an_override_means_one_thing_by_every_route(raw, scale):
    """`tdiag --set`, Snakemake's `--config` (a nested mapping) and an edit of the file
    (what `dvc exp run -S` does) resolve to the same runs."""
    raw["scale"] = scale
    by_set = validate(raw, ["studies.toy.train.lr=0.25", "studies.toy.runs.copy.train.warmup_steps=7"], env={})
    mapping = {"studies": {"toy": {"train": {"lr": 0.25}, "runs": {"copy": {"train": {"warmup_steps": 7}}}}}}
    by_config = validate(raw, overrides_from_mapping(mapping), env={})
    by_edit = validate(_edited(_edited(raw, "studies.toy.train.lr", 0.25), "studies.toy.runs.copy.train.warmup_steps", 7), env={})
    for run in by_set.run_names("toy"):
        assert by_set.run("toy", run) == by_config.run("toy", run) == by_edit.run("toy", run)
    assert by_set.run("toy", "copy").train.lr == 0.25 and by_set.run("toy", "copy").train.warmup_steps == 7


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_overriding_a_key_held_per_scale_names_the_scale_key_by_every_route(raw, scale):
    raw["scale"] = scale
    wanted = f"'scales.{scale}.studies.toy.train.max_steps'"
    messages = [
        _error_with(raw, ["studies.toy.train.max_steps=20"]),
        _error_with(raw, overrides_from_mapping({"studies": {"toy": {"train": {"max_steps": 20}}}})),
        _error(_edited(raw, "studies.toy.train.max_steps", 20)),
    ]
    for message in messages:
        assert message.startswith("'studies.toy.train.max_steps' is held per scale") and wanted in message


def _error_with(raw: dict, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw, overrides, env={})
    return str(info.value)


def test_a_scale_key_override_changes_that_scale_only(raw):
    overrides = ["scales.smoke.studies.toy.train.max_steps=20"]
    smoke = validate({**raw, "scale": "smoke"}, overrides, env={})
    full = validate({**raw, "scale": "full"}, overrides, env={})
    assert smoke.run("toy", "copy").train.max_steps == 20
    assert full.run("toy", "copy").train.max_steps == raw["scales"]["full"]["studies"]["toy"]["train"]["max_steps"]
    # a run's own per-scale value stays more specific than the study's
    assert smoke.run("toy", "pairwise_sum").train.max_steps == 1200


def test_the_committed_scales_hold_the_same_keys(raw):
    """Each key held per scale has a value at both scales, so no scale falls back to a
    schema default the other overrides."""
    def leaves(node, path=()):
        if isinstance(node, dict) and node:
            return {leaf for key, value in node.items() for leaf in leaves(value, path + (key,))}
        return {path}

    def nulls(node, path=()):
        if isinstance(node, dict):
            return {null for key, value in node.items() for null in nulls(value, path + (key,))}
        return {path} if node is None else set()

    smoke, full = (leaves(raw["scales"][s]) for s in ("smoke", "full"))
    # An explicit null at one scale (e.g. no train.stop_when) is that key's value there.
    nulls = nulls(raw["scales"]["smoke"]) | nulls(raw["scales"]["full"])
    smoke, full = ({next((n for n in nulls if p[:len(n)] == n), p) for p in paths} for paths in (smoke, full))
    toy_runs = {p for p in smoke ^ full if p[:4] == ("studies", "toy", "runs", p[3] if len(p) > 3 else None)}
    assert smoke ^ full == toy_runs  # only smoke shortens three toy runs


# --------------------------------------------------------------------- digest


def test_digest_is_stable_for_equal_configs(raw):
    a = load(PARAMS, env={}).run("toy", "copy")
    b = load(PARAMS, env={}).run("toy", "copy")
    assert a is not b and a.digest() == b.digest()
    # restating a study default in the run is the same configuration
    lr = raw["studies"]["toy"]["train"]["lr"]
    raw["studies"]["toy"]["runs"]["copy"] = {"dataset": "copy", "train": {"lr": lr}}
    assert validate(raw, env={}).run("toy", "copy").digest() == a.digest()
    assert RunConfig.model_validate(a.model_dump()).digest() == a.digest()


@pytest.mark.parametrize(
    "override",
    ["studies.toy.train.lr=0.001", "studies.toy.train.warmup_steps=100", "studies.toy.train.seed=1",
     "studies.toy.model.norm=post", "studies.toy.runs.copy.train.batch_size=50"],
)
def test_digest_changes_with_a_hyperparameter(override):
    base = load(PARAMS, env={}).run("toy", "copy").digest()
    assert load(PARAMS, [override], env={}).run("toy", "copy").digest() != base


def test_digest_includes_extra():
    run = load(PARAMS, env={}).run("toy", "copy")
    assert run.digest({"vocab_size": 20}) != run.digest({"vocab_size": 21})
    assert run.digest({"vocab_size": 20}) == run.digest({"vocab_size": 20})


# ------------------------------------------------------------------------ CLI


def _tdiag(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != MIRROR_ENV}
    return subprocess.run(
        [sys.executable, "-m", "tdiag", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("verb", [["validate"], ["train", "toy", "copy"], ["data", "synth", "copy"]])
def test_cli_misspelled_key_exits_2_with_one_line(tmp_path, raw, verb):
    _set(raw, "studies.toy.train.optimzer", "adam")
    params = _write(tmp_path, raw)
    done = _tdiag(tmp_path, "--params", str(params), *verb)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "studies.toy.train.optimzer" in lines[0] and "allowed keys:" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


def test_cli_misspelled_override_exits_2(tmp_path):
    done = _tdiag(tmp_path, "--params", str(PARAMS), "--set", "studies.toy.train.lrr=1", "train", "toy", "copy")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "studies.toy.train.lrr" in done.stderr
    assert not (tmp_path / "results").exists()


def test_cli_unknown_run_exits_2_before_writing(tmp_path):
    done = _tdiag(tmp_path, "--params", str(PARAMS), "train", "toy", "nope")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "unknown run 'nope'" in done.stderr
    assert not (tmp_path / "results").exists()


def test_cli_unknown_study_exits_2(tmp_path):
    done = _tdiag(tmp_path, "--params", str(PARAMS), "--set", "scale=smoke", "collect", "nope")
    assert done.returncode == 2
    assert done.stderr == "tdiag: error: unknown study 'nope'; studies: toy, wmt14, lm, lab\n"


def _validate_imports_torch(*overrides: str) -> bool:
    """Whether `tdiag validate` of the committed params, in a fresh process, imported torch."""
    code = (
        "import sys; from tdiag.cli import main; "
        f"assert main(['--params', {str(PARAMS)!r}, *{list(overrides)!r}, 'validate']) == 0; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1] == "True"


def test_validate_with_an_explicit_scale_does_not_import_torch():
    assert not _validate_imports_torch("--set", "scale=smoke")  # only `scale: auto` may ask torch


def test_scale_auto_imports_torch_only_where_torch_was_built_for_a_gpu():
    gpu_build = torch.version.cuda is not None or torch.version.hip is not None
    assert _validate_imports_torch() == gpu_build, "a CPU-only torch was imported to resolve scale: auto"


@pytest.mark.parametrize("version_text, may", [
    ("cuda: Optional[str] = None\ngit_version = 'x'\nhip: Optional[str] = None\n", False),
    ("cuda = None\nhip = None\n", False),
    ("cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n", True),
    ("cuda: Optional[str] = None\nhip: Optional[str] = '6.4.43482'\n", True),
    ("__version__ = '9.0'\n", True),  # unfamiliar: torch is asked
    (None, True),  # no torch/version.py found
])
def test_only_a_torch_built_for_neither_cuda_nor_rocm_is_known_to_see_no_gpu_unimported(version_text, may):
    assert cuda_probe.torch_may_see_a_gpu(version_text) is may


def test_the_probe_reads_the_installed_torchs_build():
    assert cuda_probe.torch_may_see_a_gpu(cuda_probe.torch_version_text()) == (
        torch.version.cuda is not None or torch.version.hip is not None)


def test_cli_validate_accepts_the_committed_params(tmp_path):
    done = _tdiag(tmp_path, "--params", str(PARAMS), "--set", "scale=smoke", "validate")
    assert done.returncode == 0, done.stderr
    assert "valid (scale smoke -> smoke)" in done.stdout
    assert not (tmp_path / "results").exists()


def test_checkpointing_an_lstm_is_refused_naming_both_keys(raw):
    raw["studies"]["lm"]["runs"]["01-lstm-1l-adam"].setdefault("model", {})["checkpointing"] = "blocks"
    message = _error(raw)
    assert "studies.lm.runs.01-lstm-1l-adam.model" in message
    assert "model.checkpointing" in message and "model.arch" in message


def test_unsupported_precision_is_stop_or_record(raw):
    raw["studies"]["toy"]["train"]["unsupported_precision"] = "skip"
    assert "'studies.toy.train.unsupported_precision'; allowed: 'stop' or 'record'" in _error(raw)
