"""Load a study's runs into DataFrames: one row per run, and one row per metric record."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tdiag import atomic, paths
from tdiag.config import Config


def _flatten(prefix: str, obj: dict) -> dict:
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(f"{name}.", value))
        else:
            out[name] = value
    return out


def _run_names(root: Path, study: str) -> list[str]:
    folder = root / paths.RESULTS / "runs" / study
    return sorted(p.name for p in folder.iterdir() if (p / "summary.json").exists()) if folder.exists() else []


def load_runs(root: str | Path, study: str) -> pd.DataFrame:
    """One row per finished run: summary metrics, status, and the run's resolved config."""
    root = Path(root)
    rows = []
    for run in _run_names(root, study):
        summary = json.loads((root / paths.run_summary(study, run)).read_text())
        provenance = json.loads((root / paths.run_config(study, run)).read_text())
        row = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        for split in ("test", "valid"):
            row.update(_flatten(f"{split}.", summary.get(split) or {}))
        row.update(_flatten("config.", provenance["config"]))
        row.update(
            scale=provenance["scale"],
            device=provenance["device"],
            parameters=provenance["parameters"],
            git_commit=provenance["git"]["commit"],
            python=provenance["python"],
            torch=provenance["packages"]["torch"],
            cpu=provenance["hardware"].get("cpu_model"),
            gpus=", ".join(provenance["hardware"].get("gpus") or []) or None,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def load_metrics(root: str | Path, study: str) -> pd.DataFrame:
    """Every per-step and evaluation record of the study's finished runs, with a `run` column."""
    root = Path(root)
    frames = []
    for run in _run_names(root, study):
        lines = (root / paths.run_metrics(study, run)).read_text().splitlines()
        frame = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
        frame.insert(0, "run", run)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_study_table(cfg: Config, study: str, root: Path = Path(".")) -> Path:
    runs = load_runs(root, study)
    missing = sorted(set(cfg.studies[study].runs) - set(runs.get("run", [])))
    if missing:
        raise FileNotFoundError(f"study {study}: runs without summary.json: {', '.join(missing)}")
    out = root / paths.study_table(study)
    with atomic.atomic_path(out) as tmp:
        runs.to_csv(tmp, index=False)
    return out
