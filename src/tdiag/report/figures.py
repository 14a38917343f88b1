"""The standard figures and tables of the report pages (notebooks only call these)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")

ACCURACIES = {"exact_match", "token_accuracy", "teacher_forced_exact_match"}

WORDS = {
    "exact_match": "exact match (share of sequences)",
    "token_accuracy": "token accuracy",
    "teacher_forced_exact_match": "teacher-forced exact match",
    "bleu": "BLEU",
    "chrf": "chrF",
    "loss": "loss (nats per token)",
    "perplexity": "perplexity",
    "lr": "learning rate",
    "grad_norm": "global gradient norm (before clipping)",
}
"""A record's column name as an axis label."""


def words(column: str) -> str:
    return WORDS.get(column, column.replace("_", " "))


def _mark_diverged(ax, metrics: pd.DataFrame) -> None:
    """An x at the step where a seed diverged, labelled: a diverged run is never silently dropped."""
    if "diverged" not in metrics:
        return
    diverged = metrics[metrics["diverged"].eq(True)]
    for _, rec in diverged.iterrows():
        ax.axvline(rec["step"], color="red", linestyle=":", linewidth=1)
        ax.annotate(f"{rec['run']} seed {rec['seed']} diverged", (rec["step"], ax.get_ylim()[1]),
                    color="red", fontsize=8, ha="right", va="top", rotation=90)


def eval_curves(metrics: pd.DataFrame, y: str = "exact_match", hue: str = "run", title: str | None = None):
    """An evaluation metric against optimizer step, one line per `hue` value with a
    band over seeds (min to max)."""
    evals = metrics[metrics["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=evals, x="step", y=y, hue=hue, errorbar=("pi", 100), marker="o", markersize=3, ax=ax)
    if y in ACCURACIES:
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"validation {words(y).split(' (')[0]} by step")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {words(y)}")
    ax.legend(fontsize=8, title=hue)
    _mark_diverged(ax, metrics)
    fig.tight_layout()
    return fig


def train_curves(metrics: pd.DataFrame, y: str = "loss", hue: str = "run", log_y: bool = True, title: str | None = None):
    """A per-step training record (loss, lr, grad_norm, ...) against step."""
    train = metrics[metrics["kind"] == "train"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=train, x="step", y=y, hue=hue, errorbar=None, ax=ax, linewidth=1)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title or f"training {words(y).split(' (')[0]} by step")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"training {words(y)}" if y == "loss" else words(y))
    ax.legend(fontsize=8, title=hue)
    _mark_diverged(ax, metrics)
    fig.tight_layout()
    return fig


def activation_norms(metrics: pd.DataFrame, run: str):
    """Per-layer mean activation norm against step for one run (its first seed)."""
    train = metrics[(metrics["kind"] == "train") & (metrics["run"] == run)]
    train = train[train["seed"] == train["seed"].min()]
    columns = [c for c in train.columns if c.startswith("act_norm/") and train[c].notna().any()]
    long = train.melt(id_vars="step", value_vars=columns, var_name="layer", value_name="norm")
    long["layer"] = long["layer"].str.removeprefix("act_norm/")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=long, x="step", y="norm", hue="layer", ax=ax, linewidth=1)
    ax.set_title(f"{run}: mean activation norm per layer output")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean per-token activation norm")
    fig.tight_layout()
    return fig


def with_labels(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Metric records joined with each run's dataset, grid and variant label."""
    labels = runs[["run", "dataset", "grid", "variant"]].drop_duplicates("run")
    return metrics.merge(labels, on="run", how="left")


def _rounded(values: pd.Series | None, decimals: int, mean: bool = False):
    """A score column (or its mean) to the decimals its table shows; None where the runs have none."""
    if values is None:
        return None
    return round(values.mean(), decimals) if mean else values.round(decimals)


def steps_to_threshold(metrics: pd.DataFrame, runs: pd.DataFrame, y: str = "exact_match", threshold: float = 0.99) -> pd.DataFrame:
    """Per run: the median over seeds of the first eval step with `y` >= threshold, or
    "not reached (best ...)", and each seed's fate (a diverged seed, or one not trained as
    its precision was unsupported, is listed as such)."""
    evals = metrics[metrics["kind"] == "eval"]
    rows = []
    for run, group in runs.groupby("run", sort=False):
        first = group.iloc[0]
        reached, fates = [], []
        for seed in group["seed"]:
            seed_row = group[group["seed"] == seed].iloc[0]
            curve = evals[(evals["run"] == run) & (evals["seed"] == seed)]
            hit = curve[curve[y] >= threshold]
            if seed_row["status"] == "diverged":
                fates.append(f"seed {seed}: diverged at step {int(seed_row['diverged_step'])}")
            elif seed_row["status"] == "unsupported":
                fates.append(f"seed {seed}: not trained ({seed_row['reason']})")
            elif len(hit):
                reached.append(int(hit["step"].iloc[0]))
            else:
                fates.append(f"seed {seed}: best {curve[y].max():.3f}")
        steps = f"{int(pd.Series(reached).median())}" if reached and not fates else (
            "not reached" if not reached else f"{int(pd.Series(reached).median())} ({len(reached)}/{len(group)} seeds)"
        )
        rows.append({
            "run": run,
            "dataset": first["dataset"],
            "variant": first["variant"] or "",
            f"steps to {y.replace('_', ' ')} >= {threshold}": steps,
            "other seeds": "; ".join(fates),
            f"test {y.replace('_', ' ')} (mean over seeds)": _rounded(group.get(f"test.{y}"), 3, mean=True),
            "test BLEU (mean)": _rounded(group.get("test.bleu"), 2, mean=True),
        })
    return pd.DataFrame(rows).set_index("run")


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The per-seed results table: status, held-out scores, steps, cost. A seed that
    `train.stop_when` stopped says so beside its status (its steps are where it stopped)."""
    stopped = runs["stopped_early"].eq(True) if "stopped_early" in runs else pd.Series(False, index=runs.index)
    table = pd.DataFrame(
        {
            "run": runs["run"],
            "seed": runs["seed"],
            "dataset": runs["dataset"],
            "variant": runs["variant"].fillna(""),
            "status": runs["status"].where(~stopped, runs["status"] + ", stopped early"),
            "diverged at step": runs["diverged_step"].astype("Int64"),
            "steps": runs["steps"],
            "test exact match": _rounded(runs.get("test.exact_match"), 3),
            "test token accuracy": _rounded(runs.get("test.token_accuracy"), 3),
            "test BLEU": _rounded(runs.get("test.bleu"), 2),
            "wall time (s)": runs["wall_seconds"].round(1),
            "peak memory (MiB)": (runs["peak_memory_bytes"] / 2**20).round(1),
            "parameters": runs["parameters"],
        }
    )
    return table.set_index(["run", "seed"])


def provenance_line(runs: pd.DataFrame) -> str:
    """Scale, hardware and versions behind the page, for its first screen (Markdown)."""
    first = runs.iloc[0]
    hardware = f"GPU: {first['gpus']}" if isinstance(first["gpus"], str) else f"CPU: {first['cpu']}"
    return (
        f"**Scale:** {first['scale']} · **Hardware:** {hardware} · **Device:** {first['device_description']} · "
        f"**Python** {first['python']} · **torch** {first['torch']} · **commit** `{first['git_commit']}`"
    )
