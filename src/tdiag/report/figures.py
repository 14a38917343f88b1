"""The standard figures and tables of the report pages (notebooks only call these)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")


def _diverged_marks(ax, metrics: pd.DataFrame, y: str) -> None:
    """Mark each diverged run with an x at the step it diverged, so it is never silently dropped."""
    if "diverged" not in metrics:
        return
    for _, rec in metrics[metrics["diverged"].fillna(False).astype(bool)].iterrows():
        ax.axvline(rec["step"], color="red", linestyle=":", linewidth=1)
        ax.annotate(f"{rec['run']} diverged", (rec["step"], ax.get_ylim()[1]), color="red",
                    fontsize=8, ha="right", va="top", rotation=90)


def eval_curves(metrics: pd.DataFrame, y: str = "exact_match", hue: str = "run", title: str | None = None):
    """An evaluation metric against optimizer step, one line per `hue` value (band over the rest)."""
    evals = metrics[metrics["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=evals, x="step", y=y, hue=hue, marker="o", ax=ax)
    if y in {"exact_match", "token_accuracy"}:
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"validation {y.replace('_', ' ')} by step")
    ax.set_xlabel("optimizer step")
    _diverged_marks(ax, metrics, y)
    fig.tight_layout()
    return fig


def train_curves(metrics: pd.DataFrame, y: str = "loss", hue: str = "run", log_y: bool = True, title: str | None = None):
    """A per-step training record (loss, lr, grad_norm, ...) against step."""
    train = metrics[metrics["kind"] == "train"]
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=train, x="step", y=y, hue=hue, ax=ax, linewidth=1)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title or f"training {y.replace('_', ' ')} by step")
    ax.set_xlabel("optimizer step")
    _diverged_marks(ax, metrics, y)
    fig.tight_layout()
    return fig


def activation_norms(metrics: pd.DataFrame, run: str):
    """Per-layer mean activation norm against step for one run."""
    train = metrics[(metrics["kind"] == "train") & (metrics["run"] == run)]
    columns = [c for c in train.columns if c.startswith("act_norm/")]
    long = train.melt(id_vars="step", value_vars=columns, var_name="layer", value_name="norm")
    long["layer"] = long["layer"].str.removeprefix("act_norm/")
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=long, x="step", y="norm", hue="layer", ax=ax, linewidth=1)
    ax.set_title(f"{run}: mean activation norm per layer output")
    ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The per-run results table: status, held-out scores, steps to exact match 1, cost."""
    table = pd.DataFrame(
        {
            "run": runs["run"],
            "status": runs["status"],
            "diverged at step": runs["diverged_step"],
            "steps": runs["steps"],
            "test exact match": runs.get("test.exact_match"),
            "test token accuracy": runs.get("test.token_accuracy"),
            "test loss": runs.get("test.loss"),
            "first step with valid exact match 1.0": runs["first_step_exact_match_1"],
            "wall time (s)": runs["wall_seconds"].round(1),
            "peak memory (MiB)": (runs["peak_memory_bytes"] / 2**20).round(1),
            "parameters": runs["parameters"],
        }
    )
    return table.set_index("run")


def provenance_line(runs: pd.DataFrame) -> str:
    """Scale, hardware and versions behind the page, for its first screen (Markdown)."""
    first = runs.iloc[0]
    hardware = first["gpus"] if isinstance(first["gpus"], str) else f"CPU: {first['cpu']}"
    return (
        f"**Scale:** {first['scale']} · **Hardware:** {hardware} · **Device:** {first['device']} · "
        f"**Python** {first['python']} · **torch** {first['torch']} · **commit** `{first['git_commit']}`"
    )
