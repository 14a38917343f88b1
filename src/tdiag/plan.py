"""The single stage list: studies -> runs -> stage records.

The Snakefile builds one rule per record and `dvc.yaml` is generated from the same
records, so the two orchestrators always run the same commands on the same files.
(`dvc.yaml` adds one `tdiag code` stage per set of source files: how DVC tracks a
stage's code, which Snakemake compares as a param; stage.Code.)
The list depends on which datasets, studies and runs exist, never on the scale or
the machine (config validation guarantees that), so the committed dvc.yaml is right
on a laptop and on a GPU server alike. Which params.yaml keys DVC tracks follows the
keys the file has (DVC refuses to track a missing key), so dvc.yaml is generated from
the list and the file together.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import yaml

from tdiag import paths, resources
from tdiag.config import SCALES, Config, ConfigError, RunConfig, StudyConfig
from tdiag.digest import json_digest
from tdiag.data.kinds import corpus_files, kind_of
from tdiag.stage import PACKAGE_DIR, TRAINING, Code, Stage, notebook_modules, source_files, stage_name


TRAIN_CODE = Code("train", source_files(TRAINING, "train/contract.py"))
"""What `tdiag train` runs: the loop, and the check of a custom model's contract before it."""
INDEX_CODE = Code("report_index", source_files("report/index.py"))
CHECK_CODE = Code("check", source_files("checks/runs.py"))
"""What `tdiag check` runs (tdiag.checks): the model checks of one run's model."""


PAGE_TEMPLATE = tuple(str(PACKAGE_DIR / "report/templates/offline" / name) for name in ("conf.json", "index.html.j2"))
"""The nbconvert template every study page is rendered with (report/render.py)."""


def _report_code(study: str) -> Code:
    """What rendering a study's page runs: the modules its notebook imports, the renderer
    and its page template."""
    notebook = paths.notebook(study)
    # A missing notebook is named by the stage's own missing input, not here.
    modules = source_files("report/render.py", *(notebook_modules(notebook) if notebook.is_file() else ()))
    return Code(f"report_{study}", modules + PAGE_TEMPLATE)


STUDY_KEYS = tuple(k for k in StudyConfig.model_fields if k not in ("runs", "grids", "priority"))
"""A study's keys that every one of its runs reads. `runs` and `grids` hold one entry
per run (a run reads only its own); `priority` only orders Snakemake's jobs."""

CURVES = (
    ("loss", "training loss", "train", "loss"),
    ("lr", "learning rate", "train", "lr"),
    ("grad_norm", "global grad norm (before clipping)", "train", "grad_norm"),
    ("valid_loss", "validation loss", "eval", "loss"),
)
"""DVC plots per study, one line per run: (id, title, curve file, column); x is the step.
Every workload's evaluation has a loss; its other metrics are in the same file."""


def _fetch_stage(corpus: str) -> Stage:
    from tdiag.data.corpora import corpus as corpus_info

    source = corpus_info(corpus)
    # No params (`data.mirror` only says where to copy from, and every file is checked
    # against its checksum wherever it came from), and a fingerprint of what is fetched.
    return Stage(
        name=stage_name("data_fetch", corpus),
        args=("data", "fetch", corpus),
        deps=(),
        outs=corpus_files(corpus),
        code=Code("data_fetch", source_files("data/corpora.py")),
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


def _run_entry(study: str, where: str) -> str:
    """The key of a run's own entry (`runs.<run>` or `grids.<grid>`, from `run_overrides`).
    DVC reads a '.' in a key as nesting, so a name holding one tracks its whole section."""
    section, name = where.split(".", 1)
    return f"studies.{study}.{section}" if "." in name else f"studies.{study}.{where}"


def _run_entries(cfg: Config, study: str) -> dict[str, str]:
    """Each run of `study` -> where it is defined (`runs.<run>` or `grids.<grid>`)."""
    return {run: where for run, (where, _) in cfg.studies[study].run_overrides().items()}


def _run_keys(cfg: Config, study: str, run: str, entries: dict[str, str]) -> tuple[str, ...]:
    """The params keys of a run's own settings: its entry, and for a run of one of
    `own_models` the reference run's entry and that model's section. `entries` is
    `_run_entries` of the study (computing it merges every run's overrides)."""
    rc = cfg.run(study, run)
    where = entries[rc.reference_run or run]
    own = (f"own_models.{rc.own_model}",) if rc.own_model else ()
    return (_run_entry(study, where),) + own


def _model_files(study: str, run: str, rc: RunConfig) -> tuple[str, ...]:
    """A custom model's factory file (config/factory.py): editing it retrains the runs that use it."""
    if rc.model.arch != "custom":
        return ()
    return (str(rc.model.source_file(rc.factory_key(study, run))),)


def checked_runs(cfg: Config, study: str) -> list[str]:
    """The runs whose models `tdiag check` checks: the first run of each distinct model the
    study trains (its dataset and model section). The checks read a model and a batch, not
    the optimizer or the schedule, so a grid over training keys shares one check."""
    first: dict[str, str] = {}
    for run in cfg.run_names(study):
        rc = cfg.run(study, run)
        first.setdefault(json_digest([rc.dataset, rc.model.model_dump(mode="json")]), run)
    return list(first.values())


def _check_stages(cfg: Config, study: str) -> list[Stage]:
    stages, entries = [], _run_entries(cfg, study)
    for run in checked_runs(cfg, study):
        rc = cfg.run(study, run)
        stages.append(
            Stage(
                name=stage_name("check", study, run),
                args=("check", study, run),
                deps=_dataset_files(cfg, rc.dataset) + _model_files(study, run, rc),
                code=CHECK_CODE,
                outs=(str(paths.run_checks(study, run)),),
                # The model and its data: a batch's shapes feed the checks, its training settings do not.
                params=(f"studies.{study}.dataset", f"studies.{study}.model", *_run_keys(cfg, study, run, entries), "scale"),
                fingerprint=json_digest([cfg.resolved_scale, rc.dataset, rc.model.model_dump(mode="json")]),
                resources=resources.CHECK,
            )
        )
    return stages


def _study_stages(cfg: Config, study: str) -> list[Stage]:
    stages, summaries, run_metrics = [], [], []
    entries = _run_entries(cfg, study)
    for run in cfg.run_names(study):
        rc = cfg.run(study, run)
        summary = str(paths.run_summary(study, run))
        summaries.append(summary)
        run_metrics.append(str(paths.run_metrics(study, run)))
        stages.append(
            Stage(
                name=stage_name("train", study, run),
                args=("train", study, run),
                deps=_dataset_files(cfg, rc.dataset) + _model_files(study, run, rc),
                code=TRAIN_CODE,
                # The run summary, written after every seed, comes last: its presence means
                # the run finished. The seed folders beside them are the stage's working files.
                outs=(
                    run_metrics[-1],
                    str(paths.run_curves(study, run, "train")),
                    str(paths.run_curves(study, run, "eval")),
                    summary,
                ),
                params=tuple(f"studies.{study}.{key}" for key in STUDY_KEYS)
                + _run_keys(cfg, study, run, entries) + ("scale",),
                folder=str(paths.run_dir(study, run)),
                gpus=rc.train.devices,
                priority=cfg.studies[study].priority,
                fingerprint=json_digest([cfg.resolved_scale, rc.model_dump(mode="json")]),
                resources=resources.training(cfg.resolved_scale, rc, cfg.datasets[rc.dataset]),
            )
        )
    table = str(paths.study_table(study))
    headline = str(paths.study_metrics(study))
    stages.append(
        Stage(
            name=stage_name("collect", study),
            args=("collect", study),
            deps=tuple(summaries) + tuple(run_metrics),
            code=Code("collect", source_files("report/collect.py")),
            outs=(table, headline),
            metrics=(headline,),
            fingerprint=json_digest(list(cfg.run_names(study))),
            resources=resources.REPORT,
        )
    )
    checks = _check_stages(cfg, study)
    stages += checks
    stages.append(
        Stage(
            name=stage_name("report", study),
            args=("report", study),
            deps=(table, str(paths.notebook(study)), str(paths.CLAIMS)) + tuple(summaries)
            + tuple(out for check in checks for out in check.outs),
            code=_report_code(study),
            outs=(str(paths.study_verdicts(study)), str(paths.executed_notebook(study)), str(paths.report_page(study))),
            resources=resources.REPORT,
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
    data = resources.DATA[cfg.resolved_scale]
    out = [replace(stage, resources=data) for stage in _with_data_priorities(cfg, _data_stages(cfg))]
    for study in cfg.studies:
        out += _study_stages(cfg, study)
    pages = [str(paths.report_page(s)) for s in cfg.studies]
    tables = [str(paths.study_table(s)) for s in cfg.studies]
    verdicts = [str(paths.study_verdicts(s)) for s in cfg.studies]
    out.append(
        Stage(
            name="report_index",
            args=("report", paths.REPORT_INDEX),
            deps=tuple(pages) + tuple(tables) + tuple(verdicts),
            code=INDEX_CODE,
            outs=(str(paths.report_index()),),
            params=("scale",),
            fingerprint=json_digest([cfg.scale, cfg.resolved_scale, list(cfg.studies)]),
            resources=resources.REPORT,
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


def dvc_params(keys: tuple[str, ...], params: dict) -> list[str]:
    """The params.yaml keys DVC tracks for a stage that reads `keys`: each where the file
    has it, in the base sections and in each scale section, and `scale` (which picks the
    section) wherever a scale section has one of them."""
    found = [key for key in keys if _has_key(params, key)]
    scaled = [f"scales.{scale}.{key}" for scale in SCALES for key in keys if key != "scale"]
    scaled = [key for key in scaled if _has_key(params, key)]
    if scaled and "scale" not in found:
        scaled.append("scale")
    return found + scaled


def _has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def dvc_plots(cfg: Config) -> list[dict]:
    """Top-level DVC plots: per study, each curve of `CURVES` with one line per run."""
    plots = []
    for study in cfg.studies:
        for plot_id, title, curve, column in CURVES:
            files = {str(paths.run_curves(study, run, curve)): column for run in cfg.run_names(study)}
            plots.append({f"{study}_{plot_id}": {"title": f"{study}: {title}", "x": "step", "y": files}})
    return plots


def dvc_file(cfg: Config, params: dict) -> str:
    """dvc.yaml for the configuration `cfg` loaded from the mapping `params` (params.yaml as read)."""
    return dvc_yaml(stages(cfg), params, dvc_plots(cfg))


def _code_entry(code: Code) -> dict:
    """The DVC stage that writes the digests of a stage's source files (stage.Code)."""
    return {
        "cmd": shlex.join(("tdiag", "code", code.name, *code.files)),
        "deps": list(code.files),
        "outs": [str(paths.code_digests(code.name))],
    }


def dvc_yaml(stage_list: list[Stage], params: dict, plots: list[dict] = ()) -> str:
    """dvc.yaml text for the stage list (generated, committed, kept equal by a test).

    DVC runs `cmd` through a shell, so every argument is quoted: names are validated,
    but a command must not depend on that to mean what its arguments say. Every output
    is cached, so `dvc push` / `dvc pull` share it. A stage with a `folder` declares that
    folder with `persist: true`: DVC deletes a declared output before its stage runs,
    and the folder's seed checkpoints, summaries and metrics are what a rerun resumes or
    keeps; the checkpoints themselves are left out of the cache by .dvcignore (large,
    and only resume needs them). A stage's source files reach it through its code
    stage's digests (stage.Code), which only dvc.yaml has: Snakemake compares the digest
    as a param.
    """
    doc: dict = {"stages": {}}
    code_sets: dict[str, Code] = {}
    for st in stage_list:
        entry: dict = {"cmd": shlex.join(("tdiag", *st.args))}
        deps = list(st.deps)
        if st.code:
            if st.code.name not in code_sets:  # its stage comes before the first stage that runs it
                code_sets[st.code.name] = st.code
                doc["stages"][stage_name("code", st.code.name)] = _code_entry(st.code)
            elif code_sets[st.code.name] != st.code:
                raise ValueError(f"two different sets of source files are both named code '{st.code.name}'")
            deps.append(str(paths.code_digests(st.code.name)))
        if deps:
            entry["deps"] = deps
        tracked = dvc_params(st.params, params)
        if tracked:
            entry["params"] = tracked
        if st.folder:
            entry["outs"] = [{st.folder: {"persist": True}}]
        else:
            outs = [o for o in st.outs if o not in st.metrics]
            if outs:
                entry["outs"] = outs
            if st.metrics:
                entry["metrics"] = list(st.metrics)
        doc["stages"][st.name] = entry
    if plots:
        doc["plots"] = list(plots)
    header = (
        "# Generated by `tdiag stages --dvc > dvc.yaml` from the stage list in src/tdiag/plan.py\n"
        "# and the keys params.yaml has; do not edit.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
