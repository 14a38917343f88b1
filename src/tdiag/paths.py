"""Every artifact path, defined once. All paths are relative to the project root.

Names from the configuration (datasets, studies, runs) become path components here;
config validation already holds them to `NAME_PATTERN`, and every function below that
takes a name checks again that it is one plain component, so no caller can build a path
that leaves its folder. `inside` is the last check before a command writes: the path,
resolved, must stay under the project root.
"""

from __future__ import annotations

import re
from pathlib import Path

from tdiag.errors import UserError

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
"""A dataset, study, run or grid name: one path component that is also safe as a command
argument. No leading '.' (hidden files, '.' and '..') and no leading '-' (it would read
as an option in the generated stage commands)."""
NAME_RULE = (
    "names may hold only letters a-z and A-Z, digits, '_', '-' and '.', must start with a letter, "
    "digit or '_', and may be at most 100 characters long"
)

REPORT_INDEX = "index"
"""`tdiag report index` renders reports/index.html: no study may take this name."""

RESULTS = Path("results")
REPORTS = Path("reports")
NOTEBOOKS = Path("notebooks")

SPLITS = ("train", "valid", "test")


RESOURCES = Path("resources")
CLAIMS = Path("claims.yaml")
"""The references' claims and the rules that judge them (report/claims.py)."""


def check_name(name: str) -> str:
    """`name` if it matches NAME_PATTERN, else a one-line UserError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(f"bad name {name!r}: {NAME_RULE}")
    return name


def inside(root: Path, relative: Path) -> Path:
    """`root / relative`, refused unless it stays, links followed, under the top folder it
    names (`results/`, `reports/`, `resources/`).

    That top folder may itself be a link (results on a scratch disk is common on
    clusters); below it no name or link may lead elsewhere, so a `results/` folder
    received from someone else cannot send a write out of it.
    """
    path = Path(root) / relative
    top = Path(root) / Path(relative).parts[0]
    base = top.resolve()
    if not path.resolve().is_relative_to(base):
        raise UserError(f"refusing to write {path}: it resolves to {path.resolve()}, outside {top} ({base})")
    return path


def corpus_dir(corpus: str) -> Path:
    """Where `tdiag data fetch <corpus>` puts a downloaded (or mirrored) corpus."""
    return RESOURCES / check_name(corpus)


def synthetic_dir(dataset: str) -> Path:
    return RESULTS / "data" / "synthetic" / check_name(dataset)


def prepared_dir(dataset: str) -> Path:
    """A dataset made from a real corpus (translation pairs, language-model streams)."""
    return RESULTS / "data" / check_name(dataset)


# Files inside a dataset's folder (synthetic or prepared): training reads them through
# these, whichever folder it was given.


def meta_file(folder: Path) -> Path:
    """Written last by a dataset's final stage: vocabularies, sizes, provenance."""
    return folder / "meta.json"


def pairs_file(folder: Path, split: str) -> Path:
    """A split of token-id pairs, one JSON object a line (synthetic tasks and translation)."""
    return folder / f"{split}.jsonl"


def stream_file(folder: Path, split: str) -> Path:
    """A language-model split as one LongTensor of token ids."""
    return folder / f"{split}.pt"


def vocab_file(folder: Path) -> Path:
    """A language-model dataset's vocabulary."""
    return folder / "vocab.json"


def prepared_meta(dataset: str) -> Path:
    return meta_file(prepared_dir(dataset))


def synthetic_split(dataset: str, split: str) -> Path:
    return pairs_file(synthetic_dir(dataset), split)


def synthetic_meta(dataset: str) -> Path:
    return meta_file(synthetic_dir(dataset))


def run_dir(study: str, run: str) -> Path:
    return RESULTS / "runs" / check_name(study) / check_name(run)


def run_log(study: str, run: str) -> Path:
    """The run's log (device choice, seeds); each seed also has its own (`seed_log`)."""
    return run_dir(study, run) / "log"


def run_summary(study: str, run: str) -> Path:
    """Written last by a training stage, after every seed: its presence means the run finished."""
    return run_dir(study, run) / "summary.json"


def run_metrics(study: str, run: str) -> Path:
    """The run's headline numbers (small, numeric), written with its curves just before its summary."""
    return run_dir(study, run) / "metrics.json"


def run_checks(study: str, run: str) -> Path:
    """The run's model checks (`tdiag check`): each a pass/fail with the number it measured.
    Outside the run's folder, which is the training stage's output as a whole (DVC)."""
    return RESULTS / "checks" / check_name(study) / f"{check_name(run)}.json"


def run_curves(study: str, run: str, kind: str) -> Path:
    """A per-step curve of the run (`train` or `eval`) as TSV with a `step` column: DVC plots it."""
    return run_dir(study, run) / "curves" / f"{kind}.tsv"


def seed_dir(study: str, run: str, seed: int) -> Path:
    return run_dir(study, run) / f"seed-{seed}"


def seed_config(study: str, run: str, seed: int) -> Path:
    return seed_dir(study, run, seed) / "config.json"


def seed_metrics(study: str, run: str, seed: int) -> Path:
    return seed_dir(study, run, seed) / "metrics.jsonl"


def seed_checkpoint(study: str, run: str, seed: int) -> Path:
    return seed_dir(study, run, seed) / "checkpoint.pt"


def seed_summary(study: str, run: str, seed: int) -> Path:
    """Written last by one seed's training: its presence means that seed finished."""
    return seed_dir(study, run, seed) / "summary.json"


def seed_log(study: str, run: str, seed: int) -> Path:
    return seed_dir(study, run, seed) / "log"


def study_table(study: str) -> Path:
    return RESULTS / check_name(study) / "runs.csv"


def study_verdicts(study: str) -> Path:
    """The study's claims of claims.yaml judged from its runs, written when its page renders."""
    return RESULTS / check_name(study) / "verdicts.json"


def study_metrics(study: str) -> Path:
    """Each run's headline test metric, one file per study: what `dvc exp show` tabulates."""
    return RESULTS / check_name(study) / "metrics.json"


def notebook(study: str) -> Path:
    return NOTEBOOKS / f"{check_name(study)}.ipynb"


def executed_notebook(study: str) -> Path:
    return RESULTS / "notebooks" / f"{check_name(study)}.ipynb"


def report_page(study: str) -> Path:
    return REPORTS / f"{check_name(study)}.html"


def report_index() -> Path:
    return REPORTS / "index.html"


def code_digests(name: str) -> Path:
    """The SHA-256 digests of a stage's source files (stage.Code), which DVC tracks."""
    return RESULTS / "code" / f"{check_name(name)}.sha256"


def stage_log(stage: str) -> Path:
    """What a Snakemake job of stage `stage` printed (its stdout and stderr)."""
    return RESULTS / "logs" / f"{check_name(stage)}.log"


# ------------------------------------------------------------------ real corpora


def corpus_source(corpus: str) -> Path:
    """Written last by `data fetch`: where the files came from (mirror or URL)."""
    return corpus_dir(corpus) / "source.json"


def raw_text(dataset: str, split: str, lang: str) -> Path:
    """A translation split's untokenised sentences (the references BLEU is computed against)."""
    return prepared_dir(dataset) / f"{split}.raw.{lang}"


def tokenized(dataset: str, split: str, lang: str) -> Path:
    return prepared_dir(dataset) / f"{split}.tok.{lang}"


def bpe_codes(dataset: str) -> Path:
    return prepared_dir(dataset) / "bpe.codes"


def bpe_text(dataset: str, split: str, lang: str) -> Path:
    return prepared_dir(dataset) / f"{split}.bpe.{lang}"


def pairs_split(dataset: str, split: str) -> Path:
    """Token-id pairs of a prepared translation dataset, in the synthetic tasks' format."""
    return pairs_file(prepared_dir(dataset), split)


def lm_split(dataset: str, split: str) -> Path:
    return stream_file(prepared_dir(dataset), split)


def lm_vocab(dataset: str) -> Path:
    return vocab_file(prepared_dir(dataset))


def wikitext_tokens(folder: Path, split: str) -> Path:
    """A WikiText-style token file, in a fetched corpus or a user's `datasets.<name>.path` folder."""
    return folder / f"wiki.{split}.tokens"
