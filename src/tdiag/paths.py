"""Every artifact path, defined once. All paths are relative to the project root."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")
REPORTS = Path("reports")
NOTEBOOKS = Path("notebooks")

SPLITS = ("train", "valid", "test")


def synthetic_dir(dataset: str) -> Path:
    return RESULTS / "data" / "synthetic" / dataset


def synthetic_split(dataset: str, split: str) -> Path:
    return synthetic_dir(dataset) / f"{split}.jsonl"


def synthetic_meta(dataset: str) -> Path:
    return synthetic_dir(dataset) / "meta.json"


def run_dir(study: str, run: str) -> Path:
    return RESULTS / "runs" / study / run


def run_summary(study: str, run: str) -> Path:
    """Written last by a training stage, after every seed: its presence means the run finished."""
    return run_dir(study, run) / "summary.json"


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
    return RESULTS / study / "runs.csv"


def notebook(study: str) -> Path:
    return NOTEBOOKS / f"{study}.ipynb"


def executed_notebook(study: str) -> Path:
    return RESULTS / "notebooks" / f"{study}.ipynb"


def report_page(study: str) -> Path:
    return REPORTS / f"{study}.html"


def report_index() -> Path:
    return REPORTS / "index.html"
