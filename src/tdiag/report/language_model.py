"""Tables and figures of the language-modelling study (notebooks/lm.ipynb only calls these).

Per epoch, a run has a validation perplexity (the loop evaluates the whole validation
split at every epoch end) and a training perplexity, exp of the token-weighted mean
training loss over that epoch's steps (dropout on, as trained). The study's headline
number per run is its best validation perplexity over epochs, beside the training
perplexity of the same epoch, as in the reference table.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
import pandas as pd
import seaborn as sns

from tdiag import paths
from tdiag.report import tables

ARCHITECTURES = {"lstm": "LSTM", "gpt": "GPT"}
OPTIMIZERS = ["adam", "adamw", "sgd", "momentum"]
"""Table and legend order: the adaptive methods first, then plain and momentum SGD."""
X_AXES = {"epoch": "epoch", "wall_seconds": "wall-clock time"}
MEMORY_MEASURES = {
    "cuda_max_allocated": "peak allocated CUDA memory",
    "cpu_tensor_bytes": "tensor bytes held (parameters, gradients, optimizer state, activations saved for backward)",
}
"""A seed summary's `memory_measure` (train/memory.py) in words."""


def _run_id(run: str) -> float:
    """`07-gpt-1l-sgd` -> 7: the reference table's id is the run name's leading number."""
    head = run.split("-", 1)[0]
    return int(head) if head.isdigit() else math.nan


def run_facts(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: id, architecture, layers, optimizer and rate, parameters."""
    first = runs.drop_duplicates("run").set_index("run")
    return pd.DataFrame(
        {
            "id": [_run_id(r) for r in first.index],
            "architecture": pd.Categorical(
                first["config.model.arch"].map(ARCHITECTURES), list(ARCHITECTURES.values()), ordered=True
            ),
            "layers": first["config.model.n_layers"].astype(int),
            "optimizer": pd.Categorical(first["config.train.optimizer"], OPTIMIZERS, ordered=True),
            "lr": first["config.train.lr"],
            "parameters": first["parameters"],
        },
        index=first.index,
    )


def epoch_table(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, seed, epoch >= 1): training and validation loss and perplexity,
    and the wall-clock seconds at the epoch's evaluation; with the run's facts."""
    train = metrics[metrics["kind"] == "train"].copy()
    train["epoch_index"] = np.ceil(train["epoch"] - 1e-9).astype(int)
    train["loss_x_tokens"] = train["loss"] * train["tokens"]
    per_epoch = train.groupby(["run", "seed", "epoch_index"]).agg(
        loss_x_tokens=("loss_x_tokens", "sum"), tokens=("tokens", "sum"), step_time=("step_time", "sum")
    )
    per_epoch["train_loss"] = per_epoch["loss_x_tokens"] / per_epoch["tokens"]
    evals = metrics[(metrics["kind"] == "eval") & (metrics["split"] == "valid") & (metrics["step"] > 0)].copy()
    evals["epoch_index"] = np.ceil(evals["epoch"] - 1e-9).astype(int)
    # The last evaluation of each epoch is the one at its end.
    evals = evals.sort_values("step").groupby(["run", "seed", "epoch_index"]).last()
    table = per_epoch[["train_loss", "tokens", "step_time"]].join(
        evals[["loss", "perplexity", "wall_seconds"]].rename(columns={"loss": "valid_loss", "perplexity": "valid_ppl"}),
        how="inner",
    ).reset_index().rename(columns={"epoch_index": "epoch"})
    table["train_ppl"] = np.exp(table["train_loss"].clip(upper=50))
    return table.join(run_facts(runs), on="run")


def results_table(epochs: pd.DataFrame, runs: pd.DataFrame, order: str = "id") -> pd.DataFrame:
    """The reference table: per run (mean over seeds), the best validation perplexity
    over epochs, the training perplexity at that epoch, the wall-clock time to reach it,
    test perplexity of the final model, peak memory and training tokens per second.

    `order`: 'id' (the reference's run ids) or 'group' (architecture, layers, optimizer).
    """
    best = epochs.loc[epochs.groupby(["run", "seed"])["valid_ppl"].idxmin()]
    throughput = epochs.groupby(["run", "seed"])[["tokens", "step_time"]].sum()
    per_seed = best.set_index(["run", "seed"])[["epoch", "valid_ppl", "train_ppl", "wall_seconds"]].join(throughput)
    per_seed["tokens_per_s"] = per_seed["tokens"] / per_seed["step_time"]
    seeds = runs.set_index(["run", "seed"])
    per_seed["test_ppl"] = seeds["test.perplexity"]
    per_seed["total_wall"] = seeds["wall_seconds"]
    per_seed["peak_mib"] = seeds["peak_memory_bytes"] / 2**20
    mean = per_seed.groupby("run").mean(numeric_only=True)
    facts = run_facts(runs)
    table = facts.join(mean, how="inner")
    table = table.sort_values(["id"] if order == "id" else ["architecture", "layers", "optimizer"])
    out = pd.DataFrame(
        {
            "id": table["id"].astype("Int64"),
            "run": table.index,
            "architecture": table["architecture"].astype(str),
            "layers": table["layers"],
            "optimizer": table["optimizer"].astype(str),
            "lr": table["lr"],
            "best valid PPL": table["valid_ppl"].round(1),
            "at epoch": _whole(table["epoch"]),
            "train PPL at that epoch": table["train_ppl"].round(1),
            "test PPL (final)": table["test_ppl"].round(1),
            "wall-clock to best (s)": table["wall_seconds"].round(1),
            "total wall-clock (s)": table["total_wall"].round(1),
            "peak memory (MiB)": table["peak_mib"].round(0).astype(int),
            "train tokens/s": table["tokens_per_s"].round(0).astype(int),
            "parameters": table["parameters"],
        }
    )
    return out.set_index("id")


def memory_measure(runs: pd.DataFrame) -> str:
    """What the runs' peak memory is, in words (each measure the runs used, as their
    devices differ); measured over each seed's training steps, evaluations left out."""
    return "; ".join(MEMORY_MEASURES[m] for m in runs["memory_measure"].dropna().unique())


def _whole(values: pd.Series) -> pd.Series:
    """Epochs as integers when they are (one seed), else to one decimal (a mean over seeds)."""
    return values.astype("Int64") if (values % 1 == 0).all() else values.round(1)


def data_statement(root: str | Path, runs: pd.DataFrame) -> str:
    """What text the numbers come from, from the dataset's data card (Markdown)."""
    lines = []
    for dataset in runs["dataset"].drop_duplicates():
        meta = json.loads((Path(root) / paths.prepared_meta(dataset)).read_text())
        card, source = meta["card"], meta["card"]["source"]
        text = f"**Data:** {card['label']}"
        if card["subset"]:
            text += f" — {card['subset']}"
        text += f"; vocabulary {meta['vocab_size']:,} words (from the training file)."
        if source.get("origin") == "mirror":
            text += f" Copied from the offline mirror `{source['mirror']}`: {source['note']}."
        elif source.get("origin") == "download":
            text += f" Downloaded from {source['url']} ({source['checksum']})."
        lines.append(text)
    return "\n\n".join(lines)


def _axes(ax, x: str, log_y: bool) -> None:
    """Whole epochs on an epoch axis; plain numbers on a log perplexity axis."""
    if x == "epoch":
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if log_y:
        ax.set_yscale("log")
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)


def _labelled(epochs: pd.DataFrame) -> pd.DataFrame:
    out = epochs.copy()
    out["optimizer"] = out["optimizer"].astype(str)
    out["architecture"] = out["architecture"].astype(str)
    out["depth"] = out["layers"].astype(str) + " layer" + np.where(out["layers"] > 1, "s", "")
    return out


def _panels(epochs: pd.DataFrame, x: str, hue: str, hue_order, title: str):
    """Rows: validation loss, validation perplexity (log); columns: architectures.
    None when no run is selected."""
    archs = [a for a in ARCHITECTURES.values() if a in set(epochs["architecture"])]
    if not archs:
        return None
    fig, axes = plt.subplots(2, len(archs), figsize=(6 * len(archs), 7), squeeze=False, sharex="col")
    for col, arch in enumerate(archs):
        part = epochs[epochs["architecture"] == arch]
        for row, (y, label) in enumerate((("valid_loss", "validation loss"), ("valid_ppl", "validation perplexity"))):
            ax = axes[row, col]
            sns.lineplot(data=part, x=x, y=y, hue=hue, hue_order=[h for h in hue_order if h in set(part[hue])],
                         marker="o", errorbar=None, ax=ax)
            _axes(ax, x, log_y=y == "valid_ppl")
            ax.set_title(f"{arch}: {label}")
            ax.set_ylabel(label)
            ax.set_xlabel("epoch" if x == "epoch" else "wall-clock seconds (training + evaluation)")
            ax.legend(fontsize=8, title=hue)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def optimizer_curves(epochs: pd.DataFrame, x: str = "epoch"):
    """One-layer models: validation loss and perplexity per optimizer, by epoch or wall-clock."""
    one = _labelled(epochs[epochs["layers"] == 1])
    return _panels(one, x, "optimizer", OPTIMIZERS, f"One-layer models by optimizer, against {X_AXES[x]}")


def depth_curves(epochs: pd.DataFrame, x: str = "epoch", optimizer: str = "adamw"):
    """Deeper models: validation loss and perplexity per depth at one optimizer."""
    part = _labelled(epochs[epochs["optimizer"].astype(str) == optimizer])
    order = sorted(set(part["depth"]), key=lambda s: int(s.split()[0]))
    return _panels(part, x, "depth", order, f"Depth with {optimizer}, against {X_AXES[x]}")


def best_runs_curves(epochs: pd.DataFrame, results: pd.DataFrame):
    """The best run of each architecture (lowest best validation perplexity) together,
    by epoch and by wall-clock time."""
    best = results.sort_values("best valid PPL").groupby("architecture", sort=False).head(1)["run"]
    part = epochs[epochs["run"].isin(best)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, x, label in ((axes[0], "epoch", "epoch"), (axes[1], "wall_seconds", "wall-clock seconds")):
        sns.lineplot(data=part, x=x, y="valid_ppl", hue="run", marker="o", errorbar=None, ax=ax)
        _axes(ax, x, log_y=True)
        ax.set_xlabel(label)
        ax.set_ylabel("validation perplexity")
        ax.legend(fontsize=8)
    fig.suptitle("Best run of each architecture")
    fig.tight_layout()
    return fig


def overfitting(epochs: pd.DataFrame):
    """Training (dashed) and validation (solid) perplexity per epoch for every run: where
    the validation curve turns up while the training one keeps falling, the run overfits."""
    archs = [a for a in ARCHITECTURES.values() if a in set(epochs["architecture"])]
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        part = epochs[epochs["architecture"] == arch]
        runs = sorted(set(part["run"]))
        colors = dict(zip(runs, sns.color_palette("tab10", len(runs))))
        for run in runs:
            curve = part[part["run"] == run].groupby("epoch")[["train_ppl", "valid_ppl"]].mean()
            ax.plot(curve.index, curve["valid_ppl"], "-o", color=colors[run], markersize=3, label=run)
            ax.plot(curve.index, curve["train_ppl"], "--", color=colors[run], linewidth=1)
        _axes(ax, "epoch", log_y=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("perplexity (solid: validation, dashed: training)")
        ax.set_title(f"{arch}: training vs validation perplexity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cost_bars(results: pd.DataFrame, runs: pd.DataFrame):
    """Peak memory (titled with its measure, `memory_measure`) and training throughput per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = results["run"]
    axes[0].barh(labels, results["peak memory (MiB)"], color="tab:blue")
    axes[0].set_xlabel("peak memory (MiB)")
    axes[0].set_title(textwrap.fill(memory_measure(runs), 60), fontsize=9)
    axes[1].barh(labels, results["train tokens/s"], color="tab:green")
    axes[1].set_xlabel("training tokens per second")
    for ax in axes:
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def samples_table(samples: pd.DataFrame, results: pd.DataFrame) -> tables.Samples:
    """Greedy continuations of the best run of each architecture, beside the text that
    really follows (the continuation's words that differ from it marked)."""
    if samples.empty:
        chosen = pd.DataFrame(columns=["run", "prompt", "reference", "continuation"])
    else:
        best = results.sort_values("best valid PPL").groupby("architecture", sort=False).head(1)["run"]
        chosen = samples[samples["run"].isin(best)]
    return tables.samples(chosen, ["run"], source="prompt", hypothesis="continuation",
                          headers=("prompt", "reference (the text that follows)", "greedy continuation"))
