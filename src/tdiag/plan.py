"""The single stage list: studies -> runs -> stage records.

The Snakefile builds one rule per record and `dvc.yaml` is generated from the same
records, so the two orchestrators always run the same commands on the same files.
The list depends on which datasets, studies and runs exist, never on the scale or
the machine (config validation guarantees that), so the committed dvc.yaml is right
on a laptop and on a GPU server alike.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import yaml

from tdiag import paths
from tdiag.config import Config, ConfigError
from tdiag.digest import json_digest
from tdiag.data.kinds import corpus_files, kind_of
from tdiag.stage import TRAINING, Stage, notebook_modules, source_files, stage_name


TRAIN_CODE = source_files(TRAINING)
INDEX_CODE = source_files("report/index.py")


def _report_code(study: str) -> tuple[str, ...]:
    """What rendering a study's page runs: the modules its notebook imports and the renderer."""
    notebook = paths.notebook(study)
    # A missing notebook is named by the stage's own missing input, not here.
    return source_files("report/render.py", *(notebook_modules(notebook) if notebook.is_file() else ()))


def _fetch_stage(corpus: str) -> Stage:
    from tdiag.data.corpora import corpus as corpus_info

    source = corpus_info(corpus)
    return Stage(
        name=stage_name("data_fetch", corpus),
        args=("data", "fetch", corpus),
        deps=source_files("data/corpora.py"),
        outs=corpus_files(corpus),
        params=("data",),
        # What is fetched, not from where: the mirror holds the same files (checksummed).
        fingerprint=json_digest([source.name, source.url, source.checksum.value]),
    )


def _dataset_files(cfg: Config, dataset: str) -> tuple[str, ...]:
    """What a training stage reads of a dataset; the meta file, written last, comes last."""
    return kind_of(cfg.datasets[dataset]).files(dataset)


def _data_stages(cfg: Config) -> list[Stage]:
    """Every corpus fetched once (however many datasets use it), then each dataset's own stages."""
    corpora = [c for ds in cfg.datasets.values() for c in kind_of(ds).corpora(ds)]
    stages = [_fetch_stage(c) for c in dict.fromkeys(corpora)]
    for name, ds in cfg.datasets.items():
        stages += kind_of(ds).stages(name, ds)
    return stages


def _study_stages(cfg: Config, study: str) -> list[Stage]:
    stages, summaries = [], []
    for run in cfg.run_names(study):
        rc = cfg.run(study, run)
        summary = str(paths.run_summary(study, run))
        summaries.append(summary)
        stages.append(
            Stage(
                name=stage_name("train", study, run),
                args=("train", study, run),
                deps=_dataset_files(cfg, rc.dataset) + TRAIN_CODE,
                # Per-seed folders (metrics, checkpoints) are the stage's working files;
                # the run summary, written after every seed, is its declared output.
                outs=(summary,),
                params=(f"studies.{study}", "scale", "scales"),
                metrics=(summary,),
                gpu=True,
                priority=cfg.studies[study].priority,
                fingerprint=json_digest([cfg.resolved_scale, rc.model_dump(mode="json")]),
            )
        )
    table = str(paths.study_table(study))
    stages.append(
        Stage(
            name=stage_name("collect", study),
            args=("collect", study),
            deps=tuple(summaries) + source_files("report/collect.py"),
            outs=(table,),
            fingerprint=json_digest(list(cfg.run_names(study))),
        )
    )
    stages.append(
        Stage(
            name=stage_name("report", study),
            args=("report", study),
            deps=(table, str(paths.notebook(study))) + tuple(summaries) + _report_code(study),
            outs=(str(paths.executed_notebook(study)), str(paths.report_page(study))),
        )
    )
    return stages


def _with_data_priorities(cfg: Config, data: list[Stage]) -> list[Stage]:
    """A data stage inherits the highest priority of the studies that train on its
    outputs' datasets, so a prioritised study's whole chain starts early."""
    wanted: dict[str, int] = {}
    for study, st in cfg.studies.items():
        for dataset in {cfg.run(study, run).dataset for run in cfg.run_names(study)}:
            for path in _dataset_files(cfg, dataset):
                wanted[path] = max(wanted.get(path, 0), st.priority)
    # Walk backwards: a stage whose outputs feed a prioritised stage gets its priority.
    out: list[Stage] = []
    for stage in reversed(data):
        priority = max((wanted.get(o, 0) for o in stage.outs), default=0)
        for dep in stage.deps:
            wanted[dep] = max(wanted.get(dep, 0), priority)
        out.append(replace(stage, priority=priority))
    return out[::-1]


def stages(cfg: Config) -> list[Stage]:
    """Every stage of the pipeline, in dependency order."""
    out = _with_data_priorities(cfg, _data_stages(cfg))
    for study in cfg.studies:
        out += _study_stages(cfg, study)
    pages = [str(paths.report_page(s)) for s in cfg.studies]
    tables = [str(paths.study_table(s)) for s in cfg.studies]
    out.append(
        Stage(
            name="report_index",
            args=("report", paths.REPORT_INDEX),
            deps=tuple(pages) + tuple(tables) + INDEX_CODE,
            outs=(str(paths.report_index()),),
            params=("scale",),
            fingerprint=json_digest([cfg.scale, cfg.resolved_scale, list(cfg.studies)]),
        )
    )
    named: dict[str, Stage] = {}
    for stage in out:
        if stage.name in named:
            raise ConfigError(
                f"`tdiag {' '.join(named[stage.name].args)}` and `tdiag {' '.join(stage.args)}` would both be "
                f"stage '{stage.name}' ('-' and '.' in names become '_' there); rename one of them"
            )
        named[stage.name] = stage
    return out


def final_targets(cfg: Config) -> list[str]:
    return [str(paths.report_index())]


def dvc_yaml(stage_list: list[Stage]) -> str:
    """dvc.yaml text for the stage list (generated, committed, kept equal by a test).

    DVC runs `cmd` through a shell, so every argument is quoted: names are validated,
    but a command must not depend on that to mean what its arguments say.
    """
    doc = {"stages": {}}
    for st in stage_list:
        entry: dict = {"cmd": shlex.join(("tdiag", *st.args))}
        if st.deps:
            entry["deps"] = list(st.deps)
        if st.params:
            entry["params"] = list(st.params)
        outs = [o for o in st.outs if o not in st.metrics]
        if outs:
            entry["outs"] = [{o: {"cache": False}} for o in outs]
        if st.metrics:
            entry["metrics"] = [{m: {"cache": False}} for m in st.metrics]
        doc["stages"][st.name] = entry
    header = "# Generated by `tdiag stages --dvc > dvc.yaml` from the stage list in src/tdiag/plan.py; do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
