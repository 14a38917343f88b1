"""The single stage list: studies -> runs -> stage records.

The Snakefile builds one rule per record and `dvc.yaml` is generated from the same
records, so the two orchestrators always run the same commands on the same files.
The list depends on which datasets, studies and runs exist, never on the scale or
the machine (config validation guarantees that), so the committed dvc.yaml is right
on a laptop and on a GPU server alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from tdiag import paths
from tdiag.config import SYNTHETIC, Config, LanguageModelTaskConfig, TranslationTaskConfig

PACKAGE_DIR = Path("src") / "tdiag"
REPORT_INDEX = "index"


def _code(*modules: str) -> tuple[str, ...]:
    """Source files a stage's output depends on, so editing them reruns the stage."""
    return tuple(str(PACKAGE_DIR / m) for m in modules)


DATA_CODE = _code("data/synthetic.py")
TRAIN_CODE = _code(
    "data/batching.py",
    "data/bpe.py",
    "data/lm.py",
    "data/wmt14.py",
    "models/__init__.py",
    "models/attention.py",
    "models/decoding.py",
    "models/gpt.py",
    "models/init.py",
    "models/lstm.py",
    "models/modes.py",
    "models/transformer.py",
    "train/checkpoint.py",
    "train/lm.py",
    "train/loop.py",
    "train/metrics.py",
    "train/optim.py",
    "train/seq2seq.py",
)
# Every report module, whichever a study's notebook imports (found next to this file,
# so the list is the same wherever the project is checked out).
REPORT_CODE = _code(
    *sorted(f"report/{p.name}" for p in (Path(__file__).parent / "report").glob("*.py") if p.name != "__init__.py")
)
INDEX_CODE = _code("report/index.py", "report/render.py")


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[str, ...]
    """Arguments of the `tdiag` command that runs the stage."""
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...] = ()
    """params.yaml keys the stage reads (DVC tracks them)."""
    metrics: tuple[str, ...] = ()
    """Small JSON outputs DVC shows as metrics (also listed in `outs`)."""
    gpu: bool = False
    priority: int = 0
    """Snakemake's scheduling priority (the study's `priority`; DVC runs stages in order)."""
    fingerprint: str = field(default="", compare=False)
    """Digest of the resolved settings the stage uses: Snakemake reruns a rule when it changes."""


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _fetch_stage(corpus: str) -> Stage:
    from tdiag.data.corpora import corpus as corpus_info

    return Stage(
        name=f"data_fetch_{_identifier(corpus)}",
        args=("data", "fetch", corpus),
        deps=_code("data/corpora.py"),
        outs=tuple(str(p) for p in corpus_info(corpus).outputs(paths.corpus_dir(corpus)))
        + (str(paths.corpus_source(corpus)),),
        params=("data",),
    )


def _corpora(ds) -> list[str]:
    """The corpora a dataset is made from (fetched once each, however many datasets use them)."""
    if isinstance(ds, TranslationTaskConfig):
        return [ds.corpus] + ([ds.training_corpus] if ds.training_corpus != "newstest2014" else [])
    if isinstance(ds, LanguageModelTaskConfig) and not ds.path:
        return [ds.corpus]
    return []


def _fetched_files(ds) -> tuple[str, ...]:
    from tdiag.data.corpora import corpus as corpus_info

    return tuple(
        str(p) for c in _corpora(ds) for p in [*corpus_info(c).outputs(paths.corpus_dir(c)), paths.corpus_source(c)]
    )


def _synthetic_stages(name: str, ds) -> list[Stage]:
    return [
        Stage(
            name=f"data_synth_{name}",
            args=("data", "synth", name),
            deps=DATA_CODE,
            outs=_dataset_files(name, ds),
            params=(f"datasets.{name}", "scale", "scales"),
            fingerprint=_fingerprint(ds.model_dump(mode="json")),
        )
    ]


def _translation_stages(name: str, ds: TranslationTaskConfig) -> list[Stage]:
    langs = (ds.source_lang, ds.target_lang)
    tokenized = tuple(str(paths.tokenized(name, s, lang)) for s in paths.SPLITS for lang in langs)
    raw = tuple(str(paths.raw_text(name, s, lang)) for s in paths.SPLITS for lang in langs)
    train_text = tuple(str(paths.tokenized(name, "train", lang)) for lang in langs)
    settings = (f"datasets.{name}", "scale", "scales")
    fingerprint = _fingerprint(ds.model_dump(mode="json"))
    return [
        Stage(
            name=f"data_prepare_{name}",
            args=("data", "prepare", name),
            deps=_fetched_files(ds) + _code("data/translation.py", "data/wmt14.py"),
            outs=raw + tokenized,
            params=settings,
            fingerprint=fingerprint,
        ),
        Stage(
            name=f"bpe_learn_{name}",
            args=("bpe", "learn", name),
            deps=train_text + _code("data/bpe.py"),
            outs=(str(paths.bpe_codes(name)),),
            params=settings,
            fingerprint=fingerprint,
        ),
        Stage(
            name=f"bpe_apply_{name}",
            args=("bpe", "apply", name),
            deps=raw + tokenized + (str(paths.bpe_codes(name)),) + _code("data/bpe.py", "data/translation.py"),
            outs=tuple(str(paths.bpe_text(name, s, lang)) for s in paths.SPLITS for lang in langs)
            + _dataset_files(name, ds),
            params=settings,
            fingerprint=fingerprint,
        ),
    ]


def _language_model_stages(name: str, ds: LanguageModelTaskConfig) -> list[Stage]:
    sources = (
        tuple(str(Path(ds.path) / f"wiki.{s}.tokens") for s in paths.SPLITS) if ds.path else _fetched_files(ds)
    )
    return [
        Stage(
            name=f"data_prepare_{name}",
            args=("data", "prepare", name),
            deps=sources + _code("data/lm.py"),
            outs=(str(paths.lm_vocab(name)),) + _dataset_files(name, ds),
            params=(f"datasets.{name}",),
            fingerprint=_fingerprint(ds.model_dump(mode="json")),
        )
    ]


def _dataset_files(name: str, ds) -> tuple[str, ...]:
    """What a training stage reads of a dataset; the meta file, written last, comes last."""
    if isinstance(ds, SYNTHETIC):
        files = [paths.synthetic_split(name, s) for s in paths.SPLITS]
    elif isinstance(ds, TranslationTaskConfig):
        files = [paths.pairs_split(name, s) for s in paths.SPLITS]
    else:
        files = [paths.lm_split(name, s) for s in paths.SPLITS]
    return tuple(str(p) for p in files) + (str(paths.dataset_meta(name, isinstance(ds, SYNTHETIC))),)


def _data_stages(cfg: Config) -> list[Stage]:
    corpora = [c for ds in cfg.datasets.values() for c in _corpora(ds)]
    stages = [_fetch_stage(c) for c in dict.fromkeys(corpora)]
    for name, ds in cfg.datasets.items():
        if isinstance(ds, SYNTHETIC):
            stages += _synthetic_stages(name, ds)
        elif isinstance(ds, TranslationTaskConfig):
            stages += _translation_stages(name, ds)
        else:
            stages += _language_model_stages(name, ds)
    return stages


def _study_stages(cfg: Config, study: str) -> list[Stage]:
    stages, summaries = [], []
    for run in cfg.run_names(study):
        rc = cfg.run(study, run)
        summary = str(paths.run_summary(study, run))
        summaries.append(summary)
        stages.append(
            Stage(
                name=f"train_{study}_{_identifier(run)}",
                args=("train", study, run),
                deps=_dataset_files(rc.dataset, cfg.datasets[rc.dataset]) + TRAIN_CODE,
                # Per-seed folders (metrics, checkpoints) are the stage's working files;
                # the run summary, written after every seed, is its declared output.
                outs=(summary,),
                params=(f"studies.{study}", "scale", "scales"),
                metrics=(summary,),
                gpu=True,
                priority=cfg.studies[study].priority,
                fingerprint=_fingerprint([cfg.resolved_scale, rc.model_dump(mode="json")]),
            )
        )
    table = str(paths.study_table(study))
    stages.append(
        Stage(
            name=f"collect_{study}",
            args=("collect", study),
            deps=tuple(summaries) + _code("report/collect.py"),
            outs=(table,),
        )
    )
    stages.append(
        Stage(
            name=f"report_{study}",
            args=("report", study),
            deps=(table, str(paths.notebook(study))) + tuple(summaries) + REPORT_CODE,
            outs=(str(paths.executed_notebook(study)), str(paths.report_page(study))),
        )
    )
    return stages


def _identifier(name: str) -> str:
    """Run names may hold '-' and '.'; stage (rule) names must be identifiers."""
    return re.sub(r"\W", "_", name)


def _with_data_priorities(cfg: Config, data: list[Stage]) -> list[Stage]:
    """A data stage inherits the highest priority of the studies that train on its
    outputs' datasets, so a prioritised study's whole chain starts early."""
    wanted: dict[str, int] = {}
    for study, st in cfg.studies.items():
        for dataset in {cfg.run(study, run).dataset for run in cfg.run_names(study)}:
            for path in _dataset_files(dataset, cfg.datasets[dataset]):
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
            args=("report", REPORT_INDEX),
            deps=tuple(pages) + tuple(tables) + INDEX_CODE,
            outs=(str(paths.report_index()),),
            params=("scale",),
        )
    )
    return out


def final_targets(cfg: Config) -> list[str]:
    return [str(paths.report_index())]


def dvc_yaml(stage_list: list[Stage]) -> str:
    """dvc.yaml text for the stage list (generated, committed, kept equal by a test)."""
    doc = {"stages": {}}
    for st in stage_list:
        entry: dict = {"cmd": " ".join(("tdiag", *st.args))}
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
