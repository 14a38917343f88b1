"""What DVC reads of a finished run: its headline numbers and its per-step curves.

Both are written from the seeds' `metrics.jsonl` once every seed is done, not logged
step by step: those files already hold exactly the steps up to the last checkpoint
after a resume, so the curves can hold no duplicated or stale step, and a step costs
nothing more. dvclive was measured and not used: logging 9 values a step cost 11.8 ms
per step on the project's 2-core CPU (a smoke toy step there: 73 ms), the same again per
step to write a finished run through it (47 s for a 4,000-step seed), and its resume
appends after whatever steps a kill left past the checkpoint. DVC reads the plain TSV
and JSON files written here as it reads dvclive's.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from tdiag import atomic, paths

TRAIN_COLUMNS = ("loss", "lr", "grad_norm")
"""Per optimizer step, averaged over the run's seeds."""
NOT_CURVES = {"step", "epoch", "wall_seconds"}


def _records(root: Path, study: str, run: str, seeds: list[int]) -> list[dict]:
    out = []
    for seed in seeds:
        text = (root / paths.seed_metrics(study, run, seed)).read_text()
        out += [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def _mean_by_step(records: list[dict], columns: list[str]) -> list[dict]:
    """One row per step: each column's mean over the seeds that have a finite value there."""
    steps: dict[int, list[dict]] = {}
    for record in records:
        steps.setdefault(record["step"], []).append(record)
    rows = []
    for step in sorted(steps):
        row = {"step": step}
        for column in columns:
            values = [r[column] for r in steps[step] if isinstance(r.get(column), (int, float))]
            row[column] = statistics.fmean(values) if values else None
        rows.append(row)
    return rows


def _write_tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    header = ["step", *columns]
    lines = ["\t".join(header)]
    lines += ["\t".join("" if row[c] is None else repr(row[c]) for c in header) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, "\n".join(lines) + "\n")


def write_run_curves(root: Path, study: str, run: str, seeds: list[int]) -> None:
    """`curves/train.tsv` (loss, lr, grad norm per step) and `curves/eval.tsv` (every
    numeric validation metric per evaluation step), each the mean over the seeds."""
    records = _records(root, study, run, seeds)
    train = [r for r in records if r.get("kind") == "train"]
    _write_tsv(root / paths.run_curves(study, run, "train"), _mean_by_step(train, list(TRAIN_COLUMNS)),
               list(TRAIN_COLUMNS))
    evals = [r for r in records if r.get("kind") == "eval" and r.get("split") == "valid"]
    columns = sorted({k for r in evals for k, v in r.items()
                      if k not in NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool)})
    _write_tsv(root / paths.run_curves(study, run, "eval"), _mean_by_step(evals, columns), columns)


def headline(summary: dict, metric: str) -> dict:
    """The run's headline numbers: its workload's headline metric on test and valid
    (mean over completed seeds; null when none completed) and how many seeds diverged."""
    return {
        f"test_{metric}": (summary["test"] or {}).get(metric),
        f"valid_{metric}": (summary["valid"] or {}).get(metric),
        "diverged_seeds": len(summary["diverged_seeds"]),
    }


def write_run_metrics(root: Path, study: str, run: str, summary: dict, metric: str) -> None:
    atomic.write_json(root / paths.run_metrics(study, run), headline(summary, metric))
