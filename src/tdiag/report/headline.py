"""Each study's headline result in one line, for the index, from its study table
(results/<study>/runs.csv: one row per run and seed)."""

from __future__ import annotations

from typing import Callable

import pandas as pd


def _completed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "completed"]


def toy(runs: pd.DataFrame) -> str:
    tasks = runs[runs["grid"].isna()]
    per_task = tasks.groupby("run", sort=False)["test.exact_match"].mean()
    solved = per_task[per_task >= 1.0]
    text = f"{len(solved)} of {len(per_task)} tasks at test exact match 1.0"
    if len(solved) < len(per_task):
        worst = per_task.idxmin()
        text += f" (lowest: {worst} {per_task[worst]:.3f})"
    return text


def wmt14(runs: pd.DataFrame) -> str:
    done = _completed(runs)
    if done.empty:
        return "no completed run"
    first = done.iloc[0]
    return (f"BLEU {first['train.bleu']:.1f} on its own {int(first['train.decoded_examples']):,} training pairs, "
            f"{first['test.bleu']:.1f} on {int(first['test.decoded_examples']):,} test pairs ({first['run']})")


def lm(runs: pd.DataFrame) -> str:
    done = _completed(runs)
    if done.empty:
        return "no completed run"
    per_run = done.groupby("run")["valid.perplexity"].mean()
    best = per_run.idxmin()
    return f"lowest final validation perplexity {per_run[best]:,.1f} ({best}), highest {per_run.max():,.1f}"


def lab(runs: pd.DataFrame) -> str:
    cells = _completed(runs[runs["grid"] == "lr_batch"])
    if cells.empty:
        return f"{runs['run'].nunique()} cells"
    per_cell = cells.groupby("run").agg(loss=("valid.loss", "mean"), lr=("config.train.lr", "first"),
                                        batch=("config.train.batch_size", "first"))
    best = per_cell.loc[per_cell["loss"].idxmin()]
    return (f"best learning rate x batch cell: lr {best['lr']:g}, batch {int(best['batch'])} "
            f"(final validation loss {best['loss']:.3f})")


HEADLINES: dict[str, Callable[[pd.DataFrame], str]] = {"toy": toy, "wmt14": wmt14, "lm": lm, "lab": lab}


def _runs(runs: pd.DataFrame) -> str:
    n = runs["run"].nunique()
    return f"{n} run" if n == 1 else f"{n} runs"


def headline(study: str, runs: pd.DataFrame) -> str:
    """The study's headline, or its run count for a study without one."""
    if study in HEADLINES:
        try:
            return HEADLINES[study](runs)
        except KeyError as missing:  # a study table without the column its headline reads
            return f"{_runs(runs)} (no {missing} in its table)"
    return _runs(runs)
