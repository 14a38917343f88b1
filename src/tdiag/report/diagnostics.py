"""Training diagnostics against optimizer step, for any set of runs (notebooks only call these).

Every training step records its learning rate, global gradient norm (before clipping),
the mean per-token norm of each layer's output, its wall time, the tokens its loss
covers and the seed's peak memory so far (train/loop.py, train/metrics.py,
train/memory.py). `training_diagnostics` draws them as small multiples, one line per
run and seed, for a study's task runs, one grid or one run. A panel no selected run
records is left out (a workload may not record a measure, or an older run predate it); a
diverged seed's lines end at its last finite step, marked by a dotted line; a run its
device could not train (status `unsupported`) has no records and is named, not drawn.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib import ticker
import pandas as pd
import seaborn as sns

from tdiag.report.collect import UNSUPPORTED

MEMORY_MEASURES = {
    "cuda_max_allocated": "peak allocated CUDA memory",
    "cpu_tensor_bytes": "tensor bytes held (parameters, gradients, optimizer state, activations saved for backward)",
}
"""A seed summary's `memory_measure` (train/memory.py) in words."""

MEMORY_AXIS = {
    "cuda_max_allocated": "peak allocated CUDA memory",
    "cpu_tensor_bytes": "peak tensor bytes held (CPU)",
}
"""The same, short enough for an axis label."""

MIB = 2**20
LEGEND_CHARACTERS = 150
"""About the characters a legend row of the 12-inch-wide figure holds at its font size."""
LOG_SPAN = 30
"""A panel whose positive values span more than this factor gets a log axis (`Panel.log`)."""
STACK_ORDER = {"embedding": 0, "encoder": 1, "layer": 2, "lstm": 3, "decoder": 4}
"""Activation points in the order the forward pass reaches them (train/metrics.py names them)."""


@dataclass(frozen=True)
class Panel:
    column: str
    label: str
    log: str | None = "values"
    """A log axis when these span more than LOG_SPAN: 'values' (every value drawn), 'runs'
    (each seed's median: runs at rates decades apart, while a warmup from near zero keeps
    a linear axis), None (never: a count)."""


def memory_axis_label(runs: pd.DataFrame) -> str:
    """The memory panel's label: MiB, and which measure the runs' peaks are (train/memory.py)."""
    measures = sorted(runs["memory_measure"].dropna().unique())
    return "peak memory (MiB):\n" + " / ".join(MEMORY_AXIS.get(m, m) for m in measures)


def not_trained(runs: pd.DataFrame, label: str = "run") -> str:
    """One sentence naming the runs recorded as unsupported (no records), or ''."""
    skipped = runs[runs["status"] == UNSUPPORTED].drop_duplicates("run")
    if skipped.empty:
        return ""
    names = [f"{_name(row, label)} ({row.get('reason') or 'unsupported'})" for _, row in skipped.iterrows()]
    return "Not trained on this device, so not drawn: " + "; ".join(names) + "."


def _name(row: pd.Series, label: str) -> str:
    value = row.get(label)
    return str(value) if isinstance(value, str) and value else str(row["run"])


def _layer_key(column: str) -> tuple:
    """Forward order: the encoder before the decoder, `layer.10` after `layer.2`."""
    name = column.removeprefix("act_norm/")
    stack, _, index = name.partition(".")
    return STACK_ORDER.get(stack, len(STACK_ORDER)), stack, int(index) if index.isdigit() else -1


def _step_time_window(train: pd.DataFrame) -> int:
    """Steps in the rolling median of the step time: a twentieth of the typical seed's
    steps, between 1 and 25, so short runs keep their shape and long ones lose the jitter."""
    lengths = train.groupby(["run", "seed"]).size()
    return int(min(25, max(1, lengths.median() // 20)))


def _series(train: pd.DataFrame, per_layer: bool, memory_label: str) -> tuple[pd.DataFrame, list[Panel]]:
    """The values to draw, one column per panel (activation norms: one per layer when
    `per_layer`, else the largest layer's per step), and the panels that have any."""
    train = train.sort_values(["run", "seed", "step"])
    out = train[["run", "seed", "step"]].copy()
    panels = [Panel("lr", "learning rate", log="runs"), Panel("grad_norm", "global gradient norm\n(before clipping)")]
    for panel in panels:
        out[panel.column] = train.get(panel.column)
    layers = sorted((c for c in train.columns if c.startswith("act_norm/") and train[c].notna().any()), key=_layer_key)
    if per_layer:
        for column in layers:
            out[column] = train[column]
    elif layers:
        out["act_norm"] = train[layers].max(axis=1, skipna=True)
    panels.append(Panel("act_norm", "activation norm per layer\n(mean per token)" if per_layer
                        else "activation norm, largest layer\n(mean per token)"))
    window = _step_time_window(train)
    if "step_time" in train:
        out["step_ms"] = (train["step_time"] * 1000).groupby([train["run"], train["seed"]]).transform(
            lambda s: s.rolling(window, min_periods=1, center=True).median())
    panels += [
        Panel("step_ms", f"step time (ms,\nrolling median of {window} steps)" if window > 1 else "step time (ms)"),
        Panel("tokens", "tokens per step\n(the loss's targets)", log=None),
        Panel("peak_mib", memory_label),
    ]
    out["tokens"] = train.get("tokens")
    if "peak_memory_bytes" in train:
        out["peak_mib"] = train["peak_memory_bytes"] / MIB
    layer_columns = layers if per_layer else ["act_norm"]
    present = [p for p in panels if any(c in out and out[c].notna().any()
                                        for c in (layer_columns if p.column == "act_norm" else [p.column]))]
    return out, present


def _scale(ax, values: pd.Series) -> None:
    """A log axis in plain numbers when the values span more than LOG_SPAN: ticked at 1, 2
    and 5 of each decade over up to three decades, else at each decade."""
    positive = values[values > 0]
    if len(positive) and positive.max() / positive.min() > LOG_SPAN:
        ax.set_yscale("log")
        few = positive.max() / positive.min() <= 1000
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5) if few else (1,)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _layers(ax, values: pd.DataFrame) -> None:
    """One run's activation norms, a line per layer (and seed), shallow to deep in viridis."""
    columns = [c for c in values.columns if c.startswith("act_norm/") and values[c].notna().any()]
    for color, column in zip(sns.color_palette("viridis", len(columns)), columns):
        for i, (_, seed) in enumerate(values.groupby("seed")):
            ax.plot(seed["step"], seed[column], color=color, linewidth=1,
                    label=column.removeprefix("act_norm/") if i == 0 else None)
    ax.legend(fontsize=7, title="layer", title_fontsize=7, ncol=2 if len(columns) > 4 else 1)
    _scale(ax, values[columns].stack())


def training_diagnostics(metrics: pd.DataFrame, runs: pd.DataFrame, label: str = "run", title: str | None = None):
    """Learning rate, global gradient norm, activation norms, step time, tokens per step
    and peak memory against optimizer step for the runs in `runs` (rows of
    `collect.load_runs`, any subset), one line per run and seed, coloured by run and
    named by its `label` column (e.g. `variant` for a grid). Activation norms are drawn
    per layer for a single run, else as the largest layer's per run. None when no
    selected run has a training record (see `not_trained`)."""
    selected = runs.drop_duplicates("run")
    trained = selected[selected["status"] != UNSUPPORTED]
    train = metrics[(metrics["kind"] == "train") & metrics["run"].isin(trained["run"])]
    if train.empty:
        return None
    names = {row["run"]: _name(row, label) for _, row in trained.iterrows()}
    order = [run for run in names if run in set(train["run"])]
    palette = sns.color_palette("tab10" if len(order) <= 10 else "husl", len(order))
    colors = dict(zip(order, palette))
    per_layer = len(order) == 1
    values, panels = _series(train, per_layer, memory_axis_label(runs[runs["run"].isin(order)]))

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 3.1 * nrows + 0.9), squeeze=False, sharex=True,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.remove()
    diverged = train[train.get("diverged", pd.Series(False, index=train.index)).eq(True)]
    for i, (ax, panel) in enumerate(zip(axes.flat, panels)):
        if panel.column == "act_norm" and per_layer:
            _layers(ax, values)
        else:
            for (run, _), seed in values.groupby(["run", "seed"], sort=False):
                ax.plot(seed["step"], seed[panel.column], color=colors[run], linewidth=1)
            if panel.log == "values":
                _scale(ax, values[panel.column].dropna())
            elif panel.log == "runs":
                _scale(ax, values.groupby(["run", "seed"])[panel.column].median().dropna())
        for _, record in diverged.iterrows():
            ax.axvline(record["step"], color=colors[record["run"]], linestyle=":", linewidth=1.2)
        ax.set_ylabel(panel.label, fontsize=9)
        ax.tick_params(labelsize=8)
        if i + ncols >= len(panels):  # no panel below it
            ax.set_xlabel("optimizer step", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)

    handles = [plt.Line2D([], [], color=colors[run], linewidth=2) for run in order]
    longest = max(len(names[run]) for run in order)
    columns = max(1, min(len(order), 4, LEGEND_CHARACTERS // (longest + 6)))  # no wider than the figure
    fig.legend(handles, [names[run] for run in order], loc="outside lower center", ncol=columns, fontsize=8,
               title=label)
    notes = [f"dotted line: {names[r['run']]} seed {int(r['seed'])} diverged at step {int(r['step'])}"
             for _, r in diverged.iterrows()]
    skipped = not_trained(runs, label)
    fig.suptitle("\n".join(textwrap.fill(line, 140) for line in [title or "Training diagnostics", *notes, skipped]
                           if line), fontsize=10)
    return fig
