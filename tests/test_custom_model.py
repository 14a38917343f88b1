"""A user's own model named in params.yaml (`model: {arch: custom, factory: ...}`):
it trains through `tdiag train`, a model that breaks the contract is refused in one
line before the run is touched, its source file is a dependency of exactly its runs,
and decoding works without a key/value cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, needs_mirror, tdiag, tiny_params, write_params
from test_decoding import GO, PAD, STOP, VOCAB, model_of, sources
from test_pipeline import _project_copy, _run
from test_snakemake import SNAKEMAKE, _dry_run
from tdiag import cli, config, plan
from tdiag.config import ConfigError, ModelConfig, yaml_text
from tdiag.models import build_model, decoding
from tdiag.models.custom import CustomModel
from tdiag.stage import stage_name

KEY = "studies.toy.runs.bad.model.factory"

SEQ2SEQ = '''
import torch
from torch import nn


class Seq2Seq(nn.Module):
    """A small encoder-decoder on torch.nn.Transformer, masks made from the pad id."""

    def __init__(self, src_vocab, tgt_vocab, pad_id, d_model, max_len):
        super().__init__()
        self.pad_id = pad_id
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, d_model), nn.Embedding(tgt_vocab, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.core = nn.Transformer(d_model, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                   dim_feedforward=2 * d_model, dropout=0.0, batch_first=True)
        self.core.encoder.use_nested_tensor = False  # padded batches as they are
        self.out = nn.Linear(d_model, tgt_vocab)

    def embed(self, table, ids):
        return table(ids) + self.positions(torch.arange(ids.size(1), device=ids.device))

    def forward(self, src, tgt_in):
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.size(1), device=src.device)
        pad = src == self.pad_id
        hidden = self.core(self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt_in), tgt_mask=causal,
                           tgt_is_causal=True, src_key_padding_mask=pad, memory_key_padding_mask=pad)
        return self.out(hidden)
'''

GOOD_FACTORY = '''
def build(*, src_vocab, tgt_vocab, pad_id, config):
    return Seq2Seq(src_vocab, tgt_vocab, pad_id, config.d_model, config.max_len)
'''


def _params(**runs) -> dict:
    """The tiny params with the toy runs `copy` (the project's model) and `runs`."""
    params = tiny_params()
    toy = params["studies"]["toy"]
    toy["runs"] = {"copy": {"dataset": "copy"}, **runs}
    toy["grids"] = {}
    return params


def _custom(factory: str, **train) -> dict:
    return {"dataset": "copy", "model": {"arch": "custom", "factory": factory}, "train": {"max_steps": 20, **train}}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project whose toy study has the run `bad` with its factory in models/bad.py
    (each test writes it), and the copy dataset generated."""
    folder = tmp_path_factory.mktemp("custom")
    write_params(folder, _params(bad=_custom("models/bad.py:build")))
    (folder / "models").mkdir()
    tdiag("data", "synth", "copy", cwd=folder)
    return folder


def _model_file(folder: Path, name: str, text: str) -> None:
    (folder / "models" / f"{name}.py").write_text(textwrap.dedent(text))


# ---------------------------------------------------------------- the contract


BROKEN = {
    "no file": (None, "no file models/bad.py"),
    "import fails": ("import not_a_module_anywhere\n", "importing models/bad.py failed: ModuleNotFoundError"),
    "no function": (SEQ2SEQ, "models/bad.py has no function 'build'"),
    "not callable": (SEQ2SEQ + "build = 3\n", "'build' in models/bad.py is a int, not a function"),
    "missing argument": (SEQ2SEQ + "def build(src_vocab, tgt_vocab, pad_id):\n    return None\n",
                         "cannot be called as build(src_vocab=, tgt_vocab=, pad_id=, config=)"),
    "factory raises": (SEQ2SEQ + "def build(**kwargs):\n    raise RuntimeError('no such size')\n",
                       "raised RuntimeError: no such size"),
    "not a module": (SEQ2SEQ + "def build(**kwargs):\n    return lambda src, tgt: src\n",
                     "returned a function, not a torch.nn.Module"),
    "no parameters": (SEQ2SEQ + "def build(**kwargs):\n    return torch.nn.Identity()\n", "has no parameters"),
    "forward misses an input": (
        SEQ2SEQ + GOOD_FACTORY + "Seq2Seq.forward = lambda self, tokens: self.out(self.tgt_embed(tokens))\n",
        "the model's forward cannot be called as model(src, tgt_in)",
    ),
    "forward raises": (SEQ2SEQ + GOOD_FACTORY + "Seq2Seq.embed = lambda self, table, ids: table(ids)[:, :2]\n",
                       "the model's forward model(src, tgt_in) on inputs of shape (2, 6), (2, 5) raised"),
    "wrong output type": (
        SEQ2SEQ + GOOD_FACTORY
        + "forward = Seq2Seq.forward\nSeq2Seq.forward = lambda self, src, tgt: (forward(self, src, tgt), None)\n",
        "model(src, tgt_in) returned a tuple; it must return one logits tensor (B, T, V)",
    ),
    "wrong shape": (
        SEQ2SEQ + GOOD_FACTORY
        + "forward = Seq2Seq.forward\nSeq2Seq.forward = lambda self, src, tgt: forward(self, src, tgt)[..., 1:]\n",
        "returned logits of shape (2, 5, 19); expected (B, T, V) = (2, 5, 20)",
    ),
    "wrong dtype": (
        SEQ2SEQ + GOOD_FACTORY
        + "forward = Seq2Seq.forward\nSeq2Seq.forward = lambda self, src, tgt: forward(self, src, tgt).long()\n",
        "returned logits of dtype torch.int64; they must be floating point",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_model_that_breaks_the_contract_is_refused_in_one_line_naming_the_key(case, project, monkeypatch, capsys):
    source, message = BROKEN[case]
    (project / "models" / "bad.py").unlink(missing_ok=True)
    if source is not None:
        _model_file(project, "bad", source)
    monkeypatch.chdir(project)
    assert cli.main(["train", "toy", "bad"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tdiag: error: {KEY}: "), err
    assert message in err, err
    assert not (project / "results/runs/toy/bad").exists(), "the check comes before any file of the run"


def test_the_contract_check_passes_a_good_model_and_leaves_the_random_state(project, monkeypatch):
    from tdiag.train.contract import check_custom_model

    _model_file(project, "bad", SEQ2SEQ + GOOD_FACTORY)
    monkeypatch.chdir(project)
    cfg = config.load("params.yaml")
    torch.manual_seed(5)
    state = torch.get_rng_state()
    check_custom_model(cfg, "toy", "bad", Path("."))
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------ the config


def test_the_config_refuses_a_custom_model_without_a_factory_and_a_factory_without_one():
    with pytest.raises(ConfigError, match=r"studies\.toy\.runs\.mine\.model.*arch 'custom' needs model\.factory"):
        config.validate(_params(mine={"dataset": "copy", "model": {"arch": "custom"}}))
    with pytest.raises(ConfigError, match=r"studies\.toy\.runs\.mine\.model.*model\.factory is read only with arch"):
        config.validate(_params(mine={"dataset": "copy", "model": {"arch": "gpt", "factory": "m.py:build"}}))
    with pytest.raises(ConfigError, match=r"studies\.toy\.runs\.mine\.model\.factory.*does not name a factory"):
        config.validate(_params(mine=_custom("models/mine.py")))


def test_user_keys_go_under_options_and_a_typo_elsewhere_is_still_refused():
    run = _custom("models/mine.py:build")
    run["model"]["options"] = {"rotary": True, "widths": [1, 2]}
    cfg = config.validate(_params(mine=run))
    assert cfg.run("toy", "mine").model.options == {"rotary": True, "widths": [1, 2]}
    run["model"]["rotray"] = True
    with pytest.raises(ConfigError, match=r"unknown key 'studies\.toy\.runs\.mine\.model\.rotray'"):
        config.validate(_params(mine=run))
    with pytest.raises(ConfigError, match=r"model\.options is read only with arch 'custom'"):
        config.validate(_params(mine={"dataset": "copy", "model": {"options": {"rotary": True}}}))


def test_a_factory_file_is_relative_to_the_params_folder_and_a_module_is_found_on_its_path(tmp_path):
    (tmp_path / "models").mkdir()
    _model_file(tmp_path, "mine", SEQ2SEQ + GOOD_FACTORY)
    package = tmp_path / "userpkg_custom_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(SEQ2SEQ + GOOD_FACTORY))
    params = _params(file=_custom("models/mine.py:build"), module=_custom("userpkg_custom_test.nets:build"))
    cfg = config.load(write_params(tmp_path, params))  # run from elsewhere: the folder is the file's
    assert cfg.run("toy", "file").model.source_file() == tmp_path / "models" / "mine.py"
    assert cfg.run("toy", "module").model.source_file() == package / "nets.py"
    for run in ("file", "module"):
        model = build_model(cfg.run("toy", run).model, 7, 9, PAD)
        src, tgt = torch.randint(1, 7, (2, 4)), torch.randint(1, 9, (2, 3))
        assert isinstance(model, CustomModel) and model(src, tgt).shape == (2, 3, 9)


# -------------------------------------------------------------------- training


def test_a_custom_encoder_decoder_trains_through_tdiag_train_and_an_edit_retrains_it(project):
    _model_file(project, "mine", SEQ2SEQ + GOOD_FACTORY)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["studies"]["toy"]["runs"]["mine"] = _custom("models/mine.py:build", eval_every=10)
    write_params(project, params)
    tdiag("train", "toy", "mine", cwd=project)
    run = project / "results/runs/toy/mine"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    seed = json.loads((run / "seed-0/summary.json").read_text())
    assert seed["valid"]["exact_match"] is not None and seed["samples"], "greedy decoding ran without a cache"
    recorded = json.loads((run / "seed-0/config.json").read_text())["config"]["model"]
    assert recorded["arch"] == "custom" and recorded["factory"] == "models/mine.py:build"

    kept = tdiag("train", "toy", "mine", cwd=project)
    assert "already finished (completed): kept" in kept.stderr
    with open(project / "models/mine.py", "a") as source:
        source.write("# an edit\n")
    again = tdiag("train", "toy", "mine", cwd=project)
    assert "already finished" not in again.stderr and "completed after 20 steps" in again.stderr


@needs_mirror
def test_the_example_gpt_trains_on_the_language_model_data_and_continues_prompts(tmp_path):
    params = tiny_params()
    lm = params["studies"]["lm"]
    lm["runs"] = {"mine": {"model": {"arch": "custom", "factory": "examples/custom_model/good_gpt.py:build",
                                     "n_layers": 1}}}
    write_params(tmp_path, params)
    (tmp_path / "examples/custom_model").mkdir(parents=True)
    shutil.copy(REPO / "examples/custom_model/good_gpt.py", tmp_path / "examples/custom_model")
    tdiag("data", "fetch", "wikitext2", cwd=tmp_path)
    tdiag("data", "prepare", "wikitext2", cwd=tmp_path)
    tdiag("train", "lm", "mine", cwd=tmp_path)
    seed = json.loads((tmp_path / "results/runs/lm/mine/seed-0/summary.json").read_text())
    assert seed["status"] == "completed" and seed["test"]["perplexity"] > 1
    assert seed["samples"] and all(len(s["continuation"].split()) == 20 for s in seed["samples"])


def test_the_example_gpts_are_causal_and_leaky_as_they_say(monkeypatch):
    monkeypatch.chdir(REPO)  # a ModelConfig made here resolves its factory file from the working folder
    cfg = ModelConfig(arch="custom", factory="examples/custom_model/good_gpt.py:build", d_model=16, n_heads=2,
                      n_layers=2, d_ff=32, max_len=16)
    tokens = torch.randint(0, 11, (3, 10), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    for name, causal in (("good_gpt", True), ("leaky_gpt", False)):
        torch.manual_seed(0)
        model = build_model(cfg.model_copy(update={"factory": f"examples/custom_model/{name}.py:build"}), 11, 11, None)
        model.eval()
        with torch.no_grad():
            same = torch.allclose(model(tokens)[:, :-1], model(changed)[:, :-1], atol=1e-6)
        assert same == causal, name


# ----------------------------------------------------------- plan and digests


def _two_custom_runs(folder: Path) -> config.Config:
    _model_file(folder, "one", SEQ2SEQ + GOOD_FACTORY)
    _model_file(folder, "two", SEQ2SEQ + GOOD_FACTORY)
    return config.load(write_params(folder, _params(one=_custom("models/one.py:build"),
                                                    two=_custom("models/two.py:build"))))


def test_a_custom_run_depends_on_its_model_file_and_an_edit_changes_only_its_digest(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    before = _two_custom_runs(Path("."))
    deps = {st.name: st.deps for st in plan.stages(before)}
    assert "models/one.py" in deps["train_toy_one"] and "models/one.py" not in deps["train_toy_two"]
    assert not any(dep.startswith("models/") for dep in deps["train_toy_copy"])
    dvc = yaml.safe_load(plan.dvc_file(before, yaml_text.read(Path("params.yaml"))))["stages"]
    assert "models/one.py" in dvc["train_toy_one"]["deps"] and "models/one.py" not in dvc["train_toy_two"]["deps"]

    digests = {run: before.run("toy", run).digest() for run in ("copy", "one", "two")}
    with open("models/one.py", "a") as source:
        source.write("# an edit\n")
    after = config.load("params.yaml")
    changed = {run for run in digests if after.run("toy", run).digest() != digests[run]}
    assert changed == {"one"}
    assert [st.fingerprint for st in plan.stages(after)] == [st.fingerprint for st in plan.stages(before)]


@pytest.mark.slow
def test_snakemake_reruns_exactly_the_run_whose_model_file_changed(tmp_path):
    project = _project_copy(tmp_path)
    (project / "models").mkdir()
    _model_file(project, "one", SEQ2SEQ + GOOD_FACTORY)
    params = tiny_params()
    params["studies"]["toy"]["runs"]["one"] = _custom("models/one.py:build", max_steps=5, eval_every=5)
    params["studies"]["toy"]["runs"]["copy"]["train"] = {"max_steps": 5, "eval_every": 5}
    write_params(project, params)
    targets = [stage_name("train", "toy", "one"), stage_name("train", "toy", "copy")]
    _run(SNAKEMAKE + ["--cores", "2", *targets], project)
    assert _dry_run(project, *targets) == {}
    with open(project / "models/one.py", "a") as source:
        source.write("# an edit\n")
    assert _dry_run(project, *targets) == {"train_toy_one": 1}


def test_the_lm_page_names_a_custom_model_as_its_own_architecture():
    from tdiag.report.language_model import run_facts

    runs = pd.DataFrame({"run": ["01-lstm", "06-mine"], "config.model.arch": ["lstm", "custom"],
                         "config.model.n_layers": [1, 1], "config.train.optimizer": ["adam", "adamw"],
                         "config.train.lr": [1e-3, 1e-3], "parameters": [10, 20]})
    assert list(run_facts(runs)["architecture"].astype(str)) == ["LSTM", "custom"]


# -------------------------------------------------------------------- validate


def test_validate_names_the_custom_runs_and_whether_their_factory_imports(tmp_path, monkeypatch, capsys):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    _two_custom_runs(Path("."))
    assert cli.main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "custom model models/one.py:build: imports; runs toy/one" in out
    assert "custom model models/two.py:build: imports; runs toy/two" in out
    (tmp_path / "models/two.py").write_text("raise ImportError('a missing dependency')\n")
    assert cli.main(["validate"]) == cli.EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert "custom model models/two.py:build: does not import; runs toy/two" in captured.out
    assert captured.err == ("tdiag: error: studies.toy.runs.two.model.factory: importing models/two.py failed: "
                            "ImportError: a missing dependency\n")


# -------------------------------------------------------------------- decoding


def _without_cache(model) -> CustomModel:
    """The project's model as a custom model: the same logits, no `start_decoding`."""
    return CustomModel(model, getattr(model, "pad_id", None), model.max_len)


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_and_beam_search_decode_a_model_without_a_cache_as_the_cached_decoder_does(seed):
    model = model_of(seed, stop_bias=0.5)
    plain = _without_cache(model)
    assert not hasattr(plain, "start_decoding")
    src = sources(batch=8, seed=seed + 40)
    assert torch.equal(decoding.greedy(plain, src, 12, GO, STOP), decoding.greedy(model, src, 12, GO, STOP))
    cached, cached_scores = decoding.beam_search(model, src, 12, GO, STOP, beam_size=3)
    recomputed, scores = decoding.beam_search(plain, src, 12, GO, STOP, beam_size=3)
    assert torch.equal(recomputed, cached)
    torch.testing.assert_close(scores, cached_scores)


def test_a_language_model_without_a_cache_continues_as_the_cached_one_does():
    torch.manual_seed(0)
    gpt = build_model(ModelConfig(arch="gpt", d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=16), VOCAB, VOCAB)
    gpt = gpt.double()
    context = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(3))
    assert decoding.continue_greedy(_without_cache(gpt), context, 8) == decoding.continue_greedy(gpt, context, 8)
    # Past max_len both slide a window of the last max_len tokens.
    assert decoding.continue_greedy(_without_cache(gpt), context, 14) == decoding.continue_greedy(gpt, context, 14)


# ------------------------------------------------------------------ the checks


def test_tdiag_check_passes_a_custom_model_and_names_the_leak_of_one_without_its_causal_mask(project):
    """The model checks (tdiag.checks) take a user's model by its dataset's contract."""
    _model_file(project, "checked", SEQ2SEQ + GOOD_FACTORY)
    leaky = SEQ2SEQ.replace("tgt_mask=causal,\n                           tgt_is_causal=True, ", "")
    assert leaky != SEQ2SEQ
    _model_file(project, "leaky", leaky + GOOD_FACTORY)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for name in ("checked", "leaky"):
        params["studies"]["toy"]["runs"][name] = _custom(f"models/{name}.py:build")
    write_params(project, params)
    tdiag("check", "toy", "checked", cwd=project)
    done = tdiag("check", "toy", "leaky", cwd=project)
    assert "FAIL causality: causal leak: logits at position" in done.stdout
    failed = {name: [c["name"] for c in json.loads((project / f"results/checks/toy/{name}.json").read_text())["checks"]
                     if not c["passed"]] for name in ("checked", "leaky")}
    assert failed == {"checked": [], "leaky": ["causality"]}
