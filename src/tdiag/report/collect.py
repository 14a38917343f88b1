"""Load a study's runs into DataFrames: one row per (run, seed), and one row per metric record;
write the study's table and its headline metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd

from tdiag import atomic, paths
from tdiag.config import Config
from tdiag.errors import UserError


UNSUPPORTED = "unsupported"
"""The status of a run the device could not train in its precision (train/unsupported.py):
one row per seed in `load_runs`, with its `reason` and no scores, and no records."""


def _flatten(prefix: str, obj: dict) -> dict:
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(f"{name}.", value))
        else:
            out[name] = value
    return out


EVERY = "*"
"""`own_model` for every run: the reference's and those of each of `own_models` (whose
names, like every name, cannot be '*')."""


def finished_runs(root: Path, study: str, own_model: Optional[str] = None) -> list[dict]:
    """The summary of every finished run of the study (a run's summary.json is written
    last): the reference's runs (`own_model` None), the runs of one of `own_models`
    (config/schema.py OwnModelConfig), or all of them (`EVERY`)."""
    folder = root / paths.RESULTS / "runs" / study
    if not folder.exists():
        return []
    summaries = [
        json.loads((p / "summary.json").read_text())
        for p in sorted(folder.iterdir())
        if (p / "summary.json").exists()
    ]
    if own_model == EVERY:
        return summaries
    return [s for s in summaries if s.get("own_model") == own_model]


def own_model_names(root: Path, study: str) -> list[str]:
    """The `own_models` with a finished run in the study, in name order."""
    return sorted({s["own_model"] for s in finished_runs(Path(root), study, EVERY) if s.get("own_model")})


def twins(root: Path, study: str, own_model: str) -> dict[str, str]:
    """Each finished run of `own_model` -> the reference run it stands beside."""
    return {s["run"]: s["reference_run"] for s in finished_runs(Path(root), study, own_model)}


def variant_label(variant: dict) -> str:
    """`model.init.tie=qk, ...` -> `tie=qk, ...`: the last key part is enough to read."""
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in variant.items())


def load_runs(root: str | Path, study: str, own_model: Optional[str] = None) -> pd.DataFrame:
    """One row per finished (run, seed) (of `own_model`, as `finished_runs`): status,
    held-out metrics, variant and resolved config."""
    root = Path(root)
    rows = []
    for run_summary in finished_runs(root, study, own_model):
        run = run_summary["run"]
        for seed_summary in run_summary["per_seed"]:
            seed = seed_summary["seed"]
            if run_summary["status"] == UNSUPPORTED:  # no seed trained: its provenance is the run's
                provenance = run_summary["provenance"]
            else:
                provenance = json.loads((root / paths.seed_config(study, run, seed)).read_text())
            row = {k: v for k, v in seed_summary.items() if not isinstance(v, (dict, list))}
            for split in ("train", "test", "valid"):  # `train`: the wmt14 scores on the training pairs
                row.update(_flatten(f"{split}.", seed_summary.get(split) or {}))
            row.update(_flatten("side_by_side.", seed_summary.get("side_by_side") or {}))  # train/side_by_side.py
            row.update(
                grid=run_summary["grid"],
                dataset=run_summary["dataset"],
                variant=variant_label(run_summary["variant"]),
                own_model=run_summary.get("own_model"),
                reference_run=run_summary.get("reference_run"),
                **_flatten("config.", provenance["config"]),
                scale=provenance["scale"],
                device_description=provenance["device"],
                parameters=provenance["parameters"],
                git_commit=provenance["git"]["commit"],
                python=provenance["python"],
                torch=provenance["packages"]["torch"],
                cpu=provenance["hardware"].get("cpu_model"),
                gpus=", ".join(provenance["hardware"].get("gpus") or []) or None,
                started_at=provenance["started_at"],
            )
            rows.append(row)
    return pd.DataFrame(rows)


def load_metrics(root: str | Path, study: str, own_model: Optional[str] = None) -> pd.DataFrame:
    """Every per-step and evaluation record of the study's finished runs (of `own_model`,
    as `finished_runs`), with run and seed columns (a run recorded as unsupported has none)."""
    root = Path(root)
    frames = []
    for run_summary in finished_runs(root, study, own_model):
        run = run_summary["run"]
        if run_summary["status"] == UNSUPPORTED:
            continue
        for seed in run_summary["seeds"]:
            lines = (root / paths.seed_metrics(study, run, seed)).read_text().splitlines()
            frame = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
            frame.insert(0, "seed", seed)
            frame.insert(0, "run", run)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_samples(root: str | Path, study: str) -> pd.DataFrame:
    """The sample decodes each run's first seed stored in its summary."""
    rows = []
    for run_summary in finished_runs(Path(root), study):
        first = run_summary["per_seed"][0]
        rows += [{"run": run_summary["run"], **sample} for sample in first.get("samples", [])]
    return pd.DataFrame(rows)


class UnfinishedStudy(UserError):
    """`collect` on a study some of whose runs have not finished."""


def write_study_table(cfg: Config, study: str, root: Path = Path(".")) -> Path:
    runs = load_runs(root, study, EVERY)
    missing = [run for run in cfg.run_names(study) if run not in set(runs.get("run", []))]
    if missing:
        raise UnfinishedStudy(
            f"study '{study}' is not finished: {len(missing)} of {len(cfg.run_names(study))} runs have no "
            f"summary.json yet ({', '.join(missing)}); train them first (`tdiag train {study} <run>` or snakemake)"
        )
    out = root / paths.study_table(study)
    with atomic.atomic_path(out) as tmp:
        runs.to_csv(tmp, index=False)
    return out


def write_study_metrics(cfg: Config, study: str, root: Path = Path(".")) -> Path:
    """`{"test_<metric>": {run: value}}` from each run's headline numbers: one column per
    run in `dvc exp show`, where every number of every run would be hundreds."""
    table: dict[str, dict] = {}
    for run in cfg.run_names(study):
        numbers = json.loads((root / paths.run_metrics(study, run)).read_text())
        for key, value in numbers.items():
            if key.startswith("test_"):
                table.setdefault(key, {})[run] = value
    out = root / paths.study_metrics(study)
    atomic.write_json(out, table)
    return out
