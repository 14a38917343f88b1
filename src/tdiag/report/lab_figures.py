"""The lab page's figures (notebooks/lab.ipynb only calls these); each says its device and precision."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from tdiag.report.lab import MIB, Lab

sns.set_theme(style="whitegrid", context="notebook")


def _subtitle(lab: Lab, cells: pd.DataFrame) -> str:
    precisions = ", ".join(sorted(cells["train.precision"].dropna().unique()))
    return f"{lab.device()}; {precisions}"


def lr_batch_heatmap(lab: Lab):
    """Final validation loss by rate and batch size; diverged cells grey and marked, the best cell boxed."""
    cells = lab.cells("lr_batch")
    table, _ = lab.lr_batch()
    status = cells.pivot_table(index="train.lr", columns="train.batch_size", values="status", aggfunc="first")
    tokens = cells.groupby("train.batch_size")["tokens"].median()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis_r", cbar_kws={"label": "validation loss"}, ax=ax,
                mask=table.isna())
    ax.set_facecolor("#d9d9d9")
    for i, lr in enumerate(table.index):
        for j, batch in enumerate(table.columns):
            if status.loc[lr, batch] != "completed":
                ax.text(j + 0.5, i + 0.5, str(status.loc[lr, batch]), ha="center", va="center", color="#b00000")
    if table.notna().any().any():
        i, j = np.unravel_index(np.nanargmin(table.to_numpy()), table.shape)
        ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticklabels([f"{b}\n({int(tokens[b])} tok/step)" for b in table.columns])
    ax.set_yticklabels([f"{lr:g}" for lr in table.index], rotation=0)
    ax.set_xlabel("batch size (sequences)")
    ax.set_ylabel("learning rate (AdamW)")
    ax.set_title(f"final validation loss, equal training tokens\n({_subtitle(lab, cells)})", fontsize=10)
    fig.tight_layout()
    return fig


def optimizer_curves(lab: Lab):
    """Training loss by step (smoothed) and validation loss at each evaluation, for each optimizer's best rate."""
    runs = lab.best_pairs()
    cells = lab.cells("optimizer_lr").loc[runs]
    labels = {run: f"{c['train.optimizer']} lr {c['train.lr']:g}" for run, c in cells.iterrows()}
    records = lab.metrics[lab.metrics["run"].isin(runs)].assign(cell=lambda m: m["run"].map(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    train = records[records["kind"] == "train"].copy()
    train["smoothed loss"] = train.groupby("cell")["loss"].transform(lambda s: s.rolling(10, min_periods=1).mean())
    sns.lineplot(data=train, x="step", y="smoothed loss", hue="cell", ax=axes[0], linewidth=1)
    axes[0].set_title("training loss (mean of 10 steps)")
    evals = records[(records["kind"] == "eval") & (records["split"] == "valid")]
    sns.lineplot(data=evals, x="step", y="loss", hue="cell", marker="o", ax=axes[1])
    axes[1].set_title("validation loss")
    for ax in axes:
        ax.set_xlabel("optimizer step")
    fig.suptitle(f"each optimizer at its best rate ({_subtitle(lab, cells)})", fontsize=10)
    fig.tight_layout()
    return fig


def _cost_bars(lab: Lab, cells: pd.DataFrame, by: str, title: str):
    cells = cells[cells["status"] == "completed"]
    frame = pd.DataFrame({
        by: cells[by].astype(str),
        "median step time (ms)": cells["step_seconds"] * 1000,
        "activations saved per step (MiB)": cells["saved_bytes"] / MIB,
        "peak memory (MiB)": cells["peak_bytes"] / MIB,
    })
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, column in zip(axes, frame.columns[1:]):
        sns.barplot(data=frame, x=by, y=column, ax=ax, color="#4c72b0")
        ax.set_title(column, fontsize=10)
        ax.set_ylabel("")
    fig.suptitle(f"{title} ({_subtitle(lab, cells)}; peak: {lab.memory_measure()})", fontsize=9)
    fig.tight_layout()
    return fig


def checkpointing_bars(lab: Lab):
    return _cost_bars(lab, lab.cells("checkpointing"), "model.checkpointing", "activation checkpointing")


def micro_batch_costs(lab: Lab):
    """Step time, memory and gradient agreement against the number of micro-batches."""
    cells = lab.cells("micro_batches")
    cells = cells[cells["status"] == "completed"].sort_values("train.micro_batches")
    quality = lab.grad_quality()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    k = cells["train.micro_batches"]
    axes[0].plot(k, cells["step_seconds"] * 1000, marker="o")
    axes[0].set_title("median step time (ms)", fontsize=10)
    axes[1].plot(k, cells["saved_bytes"] / MIB, marker="o", label="activations saved per step")
    axes[1].plot(k, cells["peak_bytes"] / MIB, marker="s", label="peak")
    axes[1].set_title("memory (MiB)", fontsize=10)
    axes[1].legend(fontsize=8)
    split = cells[cells["train.micro_batches"] > 1]
    difference = split.index.map(quality["max relative difference"]) if not quality.empty else []
    axes[2].plot(split["train.micro_batches"], difference, marker="o")
    axes[2].set_ylim(bottom=0)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[2].set_title("||g_acc - g_full|| / ||g_full|| (max)", fontsize=10)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(k), [str(v) for v in k])
        ax.set_xlabel("micro-batches per step")
    fig.suptitle(f"one batch of {int(cells['train.batch_size'].iloc[0])} sequences, split "
                 f"({_subtitle(lab, cells)}; peak: {lab.memory_measure()})", fontsize=9)
    fig.tight_layout()
    return fig


def precision_curves(lab: Lab):
    """Training loss by step for each precision that ran, beside its step time and memory."""
    cells = lab.cells("precision")
    ran = cells[cells["status"] != "unsupported"]
    labels = dict(zip(ran.index, ran["train.precision"]))
    train = lab.metrics[(lab.metrics["kind"] == "train") & lab.metrics["run"].isin(labels)].copy()
    train["precision"] = train["run"].map(labels)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2, 1, 1]})
    sns.lineplot(data=train, x="step", y="loss", hue="precision", style="precision", ax=axes[0], linewidth=1)
    axes[0].set_title("training loss", fontsize=10)
    done = ran[ran["status"] == "completed"]
    axes[1].bar(done["train.precision"], done["step_seconds"] * 1000)
    axes[1].set_title("median step time (ms)", fontsize=10)
    axes[2].bar(done["train.precision"], done["saved_bytes"] / MIB)
    axes[2].set_title("activations saved per step (MiB)", fontsize=10)
    skipped = cells[cells["status"] == "unsupported"]
    note = "; ".join(f"{p}: not run" for p in skipped["train.precision"]) if "train.precision" in skipped else ""
    fig.suptitle(f"precision ({lab.device()}){'; ' + note if note else ''}", fontsize=9)
    fig.tight_layout()
    return fig


def attention_length(lab: Lab):
    """Step time and activation bytes against context length, one line per attention implementation."""
    cells = lab.cells("attention_length")
    done = cells[cells["status"] == "completed"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for attention, group in done.groupby("model.attention"):
        group = group.sort_values("train.bptt")
        axes[0].plot(group["train.bptt"], group["step_seconds"] * 1000, marker="o", label=attention)
        axes[1].plot(group["train.bptt"], group["saved_bytes"] / MIB, marker="o", label=attention)
        axes[2].plot(group["train.bptt"], group["peak_bytes"] / MIB, marker="o", label=attention)
    for ax, title in zip(axes, ("median step time (ms)", "activations saved per step (MiB)", "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        lengths = sorted(done["train.bptt"].unique())
        ax.set_xticks(lengths, [str(int(t)) for t in lengths])
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"hand-coded vs SDPA attention, the same tokens per step at every length ({_subtitle(lab, done)}; "
                 f"peak: {lab.memory_measure()})", fontsize=9)
    fig.tight_layout()
    return fig


def norm_warmup_gradients(lab: Lab):
    """Per-block gradient norm by step, one panel per (norm, warmup) cell."""
    cells = lab.cells("norm_warmup").sort_values(["model.norm", "train.warmup_steps"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True, sharey=True)
    for ax, (run, cell) in zip(axes.flat, cells.iterrows()):
        train = lab.metrics[(lab.metrics["run"] == run) & (lab.metrics["kind"] == "train")]
        columns = sorted((c for c in train.columns if c.startswith("grad_norm/") and train[c].notna().any()),
                         key=lambda c: int(c.rsplit(".", 1)[-1]) if c.rsplit(".", 1)[-1].isdigit() else -1)
        for column in columns:
            ax.plot(train["step"], train[column].rolling(5, min_periods=1).mean(), linewidth=1,
                    label=column.removeprefix("grad_norm/"))
        ax.set_yscale("log")
        ax.set_title(f"{cell['model.norm']}-LN, warmup {int(cell['train.warmup_steps'])} ({cell['status']})",
                     fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7, ncol=2, title="block")
    fig.suptitle(f"gradient norm of each block (mean of 5 steps, before clipping) ({_subtitle(lab, cells)})",
                 fontsize=9)
    fig.tight_layout()
    return fig


def norm_warmup_final_layer_norm(lab: Lab):
    """The final LayerNorm's weight norm and gradient norm by step, and validation loss, per cell."""
    cells = lab.cells("norm_warmup")
    labels = {run: f"{c['model.norm']}-LN, warmup {int(c['train.warmup_steps'])}" for run, c in cells.iterrows()}
    records = lab.metrics[lab.metrics["run"].isin(labels)].assign(cell=lambda m: m["run"].map(labels))
    train = records[records["kind"] == "train"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, column, title in ((axes[0], "final_ln/weight_norm", "final LayerNorm: weight norm"),
                              (axes[1], "final_ln/grad_norm", "final LayerNorm: gradient norm")):
        if column in train:
            sns.lineplot(data=train, x="step", y=column, hue="cell", ax=ax, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("")
    axes[1].set_yscale("log")
    evals = records[(records["kind"] == "eval") & (records["split"] == "valid")]
    sns.lineplot(data=evals, x="step", y="loss", hue="cell", marker="o", ax=axes[2])
    axes[2].set_title("validation loss", fontsize=10)
    fig.suptitle(f"pre-LN: the stack's final LayerNorm; post-LN: the last block's last LayerNorm "
                 f"({_subtitle(lab, cells)})", fontsize=9)
    fig.tight_layout()
    return fig
