"""Tables and figures of the language-modelling study (notebooks/lm.ipynb only calls these).

At every evaluation (every `eval_every` steps of an epoch and at each epoch's end,
train/loop.py) a run has a validation perplexity, of the whole validation split, and a
training perplexity: exp of the token-weighted mean training loss over the steps since
the previous evaluation (dropout on, as trained). The study's headline number per run is
its best validation perplexity over evaluations, beside the training perplexity of the
same interval, as in the reference table; the curves draw both at every evaluation.
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
from tdiag.report.diagnostics import MEMORY_MEASURES

ARCHITECTURES = {"lstm": "LSTM", "gpt": "GPT", "custom": "custom"}
"""config.model.arch -> its name on the page, in table order (custom: a user's own model, README "Your own model")."""
OPTIMIZERS = ["adam", "adamw", "sgd", "momentum"]
"""Table and legend order: the adaptive methods first, then plain and momentum SGD."""
X_AXES = {"epoch": "epoch", "wall_seconds": "wall-clock time"}
X_LABELS = {"epoch": "epoch", "wall_seconds": "wall-clock seconds (training + evaluations)"}


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


def _intervals(metrics: pd.DataFrame, runs: pd.DataFrame, epoch_ends: bool) -> pd.DataFrame:
    """One row per validation evaluation after step 0 (`epoch_ends`: only the last one of
    each epoch, the one at its end): its loss, perplexity and wall-clock seconds, and the
    training steps since the previous row's evaluation: token-weighted mean loss, tokens
    and summed step time; with the run's facts."""
    evals = metrics[(metrics["kind"] == "eval") & (metrics["split"] == "valid") & (metrics["step"] > 0)]
    evals = evals.sort_values(["run", "seed", "step"])
    if epoch_ends:
        epoch_index = np.ceil(evals["epoch"] - 1e-9).astype(int)
        evals = evals.groupby([evals["run"], evals["seed"], epoch_index], sort=False).tail(1)
    train = metrics[(metrics["kind"] == "train") & metrics["loss"].notna()].sort_values("step")
    # Each training step belongs to the first evaluation at or after it; steps after the
    # last evaluation (a diverged seed's) belong to none.
    train = pd.merge_asof(train[["run", "seed", "step", "loss", "tokens", "step_time"]],
                          evals[["run", "seed", "step"]].rename(columns={"step": "eval_step"}).sort_values("eval_step"),
                          left_on="step", right_on="eval_step", by=["run", "seed"], direction="forward")
    train = train.dropna(subset=["eval_step"]).astype({"eval_step": int})
    train["loss_x_tokens"] = train["loss"] * train["tokens"]
    steps = train.groupby(["run", "seed", "eval_step"]).agg(
        loss_x_tokens=("loss_x_tokens", "sum"), tokens=("tokens", "sum"), step_time=("step_time", "sum"),
        train_steps=("step", "size"),
    )
    steps["train_loss"] = steps.pop("loss_x_tokens") / steps["tokens"]
    table = evals.set_index(["run", "seed", "step"])[["epoch", "loss", "perplexity", "wall_seconds"]].rename(
        columns={"loss": "valid_loss", "perplexity": "valid_ppl"}
    ).join(steps.rename_axis(["run", "seed", "step"]), how="inner").reset_index()
    table["train_ppl"] = np.exp(table["train_loss"].clip(upper=50))
    return table.join(run_facts(runs), on="run")


def evaluation_table(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, seed, evaluation after step 0): step, epoch (a fraction between
    epoch ends), wall-clock seconds, validation loss and perplexity, and the training loss
    and perplexity over the steps since the previous evaluation (`train_steps` of them,
    their `tokens` and summed `step_time`); with the run's facts."""
    return _intervals(metrics, runs, epoch_ends=False)


def epoch_table(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, seed, epoch >= 1): the evaluation at the epoch's end, and the
    training loss and perplexity over the whole epoch; with the run's facts."""
    table = _intervals(metrics, runs, epoch_ends=True)
    table["epoch"] = table["epoch"].round().astype(int)
    return table


def results_table(evaluations: pd.DataFrame, runs: pd.DataFrame, order: str = "id") -> pd.DataFrame:
    """The reference table from `evaluation_table`: per run (mean over seeds), the best
    validation perplexity over evaluations, the epoch it was reached at, the training
    perplexity over the steps since the evaluation before it, the wall-clock time to
    reach it, test perplexity of the final model, peak memory and training tokens per
    second.

    `order`: 'id' (the reference's run ids) or 'group' (architecture, layers, optimizer).
    """
    best = evaluations.loc[evaluations.groupby(["run", "seed"])["valid_ppl"].idxmin()]
    throughput = evaluations.groupby(["run", "seed"])[["tokens", "step_time"]].sum()
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
            "train PPL since the evaluation before": table["train_ppl"].round(1),
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
    """Epochs as integers when they are whole, else to two decimals (between epoch ends,
    or a mean over seeds)."""
    return values.astype("Int64") if (values % 1 == 0).all() else values.round(2)


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


def _labelled(evaluations: pd.DataFrame) -> pd.DataFrame:
    out = evaluations.copy()
    out["optimizer"] = out["optimizer"].astype(str)
    out["architecture"] = out["architecture"].astype(str)
    out["depth"] = out["layers"].astype(str) + " layer" + np.where(out["layers"] > 1, "s", "")
    return out


def _seed_mean(evaluations: pd.DataFrame) -> pd.DataFrame:
    """One point per (run, evaluation step): the mean over seeds of its numbers."""
    numbers = ["epoch", "wall_seconds", "train_loss", "valid_loss", "train_ppl", "valid_ppl"]
    mean = evaluations.groupby(["run", "step"], as_index=False)[numbers].mean()
    per_evaluation = [*numbers, "seed", "step", "tokens", "step_time", "train_steps"]
    labels = evaluations.drop(columns=per_evaluation).drop_duplicates("run")
    return mean.merge(labels, on="run")


def _train_and_valid(ax, curve: pd.DataFrame, x: str, y: str, color, label: str | None) -> None:
    """Validation (solid, a dot at each evaluation) and training (dashed) values of one run."""
    curve = curve.sort_values("step")
    ax.plot(curve[x], curve[f"valid_{y}"], "-o", color=color, markersize=3, linewidth=1.5, label=label)
    ax.plot(curve[x], curve[f"train_{y}"], "--", color=color, linewidth=1)


def _style_legend(ax, title: str | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="grey", marker="o", markersize=3), plt.Line2D([], [], color="grey", ls="--")]
    labels += ["validation", "training (since the previous evaluation)"]
    ax.legend(handles, labels, fontsize=7, title=title, title_fontsize=8)


def _panels(evaluations: pd.DataFrame, x: str, hue: str, hue_order, title: str):
    """Rows: loss, perplexity (log), each training (dashed) and validation (solid) at
    every evaluation; columns: architectures. None when no run is selected."""
    archs = [a for a in ARCHITECTURES.values() if a in set(evaluations["architecture"])]
    if not archs:
        return None
    points = _seed_mean(evaluations)
    fig, axes = plt.subplots(2, len(archs), figsize=(6 * len(archs), 7), squeeze=False, sharex="col")
    for col, arch in enumerate(archs):
        part = points[points["architecture"] == arch]
        present = [h for h in hue_order if h in set(part[hue])]
        colors = dict(zip(present, sns.color_palette("tab10", len(present))))
        for row, (y, label) in enumerate((("loss", "loss (nats per token)"), ("ppl", "perplexity"))):
            ax = axes[row, col]
            for value in present:
                for _, curve in part[part[hue] == value].groupby("run"):
                    _train_and_valid(ax, curve, x, y, colors[value], value)
            _axes(ax, x, log_y=y == "ppl")
            ax.set_title(f"{arch}: {label}")
            ax.set_ylabel(label)
            ax.set_xlabel(X_LABELS[x])
            _style_legend(ax, hue)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def optimizer_curves(evaluations: pd.DataFrame, x: str = "epoch"):
    """One-layer models: training and validation loss and perplexity per optimizer at
    every evaluation, by epoch or wall-clock."""
    one = _labelled(evaluations[evaluations["layers"] == 1])
    return _panels(one, x, "optimizer", OPTIMIZERS, f"One-layer models by optimizer, against {X_AXES[x]}")


def depth_curves(evaluations: pd.DataFrame, x: str = "epoch", optimizer: str = "adamw"):
    """Models of every depth at one optimizer: training and validation loss and perplexity per depth."""
    part = _labelled(evaluations[evaluations["optimizer"].astype(str) == optimizer])
    order = sorted(set(part["depth"]), key=lambda s: int(s.split()[0]))
    return _panels(part, x, "depth", order, f"Depth with {optimizer}, against {X_AXES[x]}")


def best_runs_curves(evaluations: pd.DataFrame, results: pd.DataFrame):
    """The best run of each architecture (lowest best validation perplexity) together:
    training and validation perplexity at every evaluation, by epoch and by wall-clock time."""
    best = results.sort_values("best valid PPL").groupby("architecture", sort=False).head(1)["run"]
    points = _seed_mean(evaluations[evaluations["run"].isin(best)])
    colors = dict(zip(best, sns.color_palette("tab10", len(best))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, x in zip(axes, ("epoch", "wall_seconds")):
        for run in best:
            _train_and_valid(ax, points[points["run"] == run], x, "ppl", colors[run], run)
        _axes(ax, x, log_y=True)
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel("perplexity")
        _style_legend(ax)
    fig.suptitle("Best run of each architecture")
    fig.tight_layout()
    return fig


def overfitting(evaluations: pd.DataFrame, x: str = "epoch"):
    """Training (dashed) and validation (solid) perplexity at every evaluation for every
    run: where the validation curve turns up while the training one keeps falling, the
    run overfits."""
    points = _seed_mean(evaluations)
    archs = [a for a in ARCHITECTURES.values() if a in set(points["architecture"])]
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        part = points[points["architecture"] == arch]
        runs = sorted(set(part["run"]))
        colors = dict(zip(runs, sns.color_palette("tab10", len(runs))))
        for run in runs:
            _train_and_valid(ax, part[part["run"] == run], x, "ppl", colors[run], run)
        _axes(ax, x, log_y=True)
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel("perplexity")
        ax.set_title(f"{arch}: training vs validation perplexity")
        _style_legend(ax)
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
