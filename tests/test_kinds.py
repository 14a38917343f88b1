"""The dataset kinds registry (data/kinds.py): one entry per kind, covering every task."""

from __future__ import annotations

import ast
import importlib
import inspect
import typing
from pathlib import Path

import pytest

from conftest import REPO, tdiag, tiny_params, write_params
from tdiag import config, paths
from tdiag.config import DatasetConfig
from tdiag.data.kinds import KINDS, kind_of
from tdiag.train.workload import Workload


def _task_literals() -> set[str]:
    """Every `task` value the dataset config union accepts."""
    union = typing.get_args(DatasetConfig)[0]
    return {
        task for member in typing.get_args(union) for task in typing.get_args(member.model_fields["task"].annotation)
    }


def test_every_task_of_the_dataset_config_union_has_exactly_one_kind():
    claimed = [task for kind in KINDS.values() for task in kind.tasks]
    assert len(claimed) == len(set(claimed)), "a task belongs to two kinds"
    assert set(claimed) == _task_literals()


def test_the_committed_datasets_get_their_kinds():
    cfg = config.load(REPO / "params.yaml")
    kinds = {name: kind_of(ds).name for name, ds in cfg.datasets.items()}
    assert kinds["copy"] == kinds["polynomial"] == kinds["dates"] == "synthetic"
    assert kinds["wmt14_en_fr"] == "translation" and kinds["wikitext2"] == "language_model"


@pytest.mark.parametrize("name", KINDS)
def test_a_kinds_verbs_and_workload_resolve(name: str):
    kind = KINDS[name]
    for verb in kind.verbs:  # each called as action(dataset name, dataset config, root)
        assert list(inspect.signature(kind.action(verb)).parameters)[:3] == ["name", "cfg", "root"], verb
    assert kind.action("data fetch") is None
    module, _, attribute = kind.workload_class.partition(":")
    workload_class = getattr(importlib.import_module(module), attribute)
    methods = {n for n, m in vars(Workload).items() if inspect.isfunction(m) or isinstance(m, property)}
    assert methods <= set(dir(workload_class))


def test_each_kinds_stages_use_its_verbs_and_end_with_its_files():
    cfg = config.load(REPO / "params.yaml")
    for name, ds in cfg.datasets.items():
        kind = kind_of(ds)
        stages = kind.stages(name, ds)
        assert {" ".join(st.args[:2]) for st in stages} <= set(kind.verbs), name
        assert all(st.args[2] == name for st in stages)
        assert stages[-1].outs[-len(kind.files(name)):] == kind.files(name), name
        assert kind.files(name)[-1] == str(kind.meta_file(name)) == str(paths.meta_file(kind.folder(name)))


@pytest.mark.parametrize("module", ["plan.py", "cli.py", "train/loop.py"])
def test_plan_cli_and_loop_do_not_name_dataset_config_classes(module: str):
    """They ask the registry; a type check on dataset configs would bring back the scattered dispatch."""
    tree = ast.parse((REPO / "src" / "tdiag" / module).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & {"SYNTHETIC", "SymbolTaskConfig", "PolynomialTaskConfig", "DatesTaskConfig",
                        "TranslationTaskConfig", "LanguageModelTaskConfig"}


def test_a_verb_that_does_not_apply_to_a_datasets_kind_is_refused(tmp_path: Path):
    write_params(tmp_path, tiny_params())
    done = tdiag("bpe", "learn", "copy", cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "tdiag: error: `tdiag bpe learn` does not apply to dataset 'copy' (task copy)"
    assert not (tmp_path / "results").exists()
