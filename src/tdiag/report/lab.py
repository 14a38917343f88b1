"""The recipe and efficiency lab's tables and findings (notebooks/lab.ipynb only calls these).

Every run of the lab is a cell of one of seven grids (params.yaml, `studies.lab.grids`).
For each grid, `Lab` gives one row per cell (its varied values, status, held-out loss
and what a step cost) and a finding: one sentence computed from those rows when the
page renders, never written in advance. A cell that diverged or that the hardware could
not run is shown as such; no number of another cell is put in its place.

Costs: the median optimizer step time (forward, backward, update; evaluation excluded),
the median bytes of activations saved for backward per step, and the run's own peak
memory in the measure its device allows (train/memory.py): the CUDA allocator's maximum
on a GPU, on a CPU the tensor bytes the run holds at its largest step (parameters,
gradients, optimizer state and activations saved for backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tdiag.report import collect

STUDY = "lab"
MIB = 2**20

EXPERIMENTS = {
    "lr_batch": "Learning rate x batch size",
    "optimizer_lr": "Optimizer x learning rate",
    "checkpointing": "Activation checkpointing",
    "micro_batches": "Micro-batches with gradient accumulation",
    "precision": "Precision",
    "attention_length": "Attention implementation vs context length",
    "norm_warmup": "Norm placement x warmup",
}
"""Grid name -> section title, in page order; the anchor of a section is its grid name."""

MEASURES = {
    "cuda_max_allocated": "peak allocated CUDA memory",
    "cpu_tensor_bytes": "tensor bytes held at the largest step (parameters, gradients, optimizer state, "
                        "activations saved for backward)",
}

SIMILAR = 0.01
"""Validation losses closer than this (nats) are called about equal in a finding."""


def _mib(value: float) -> str:
    return f"{value / MIB:,.1f} MiB"


def _loss(value: float) -> str:
    return f"{value:.3f} (perplexity {math.exp(min(value, 50)):,.1f})"


def _rate(value: float) -> str:
    return f"{value:g}"


@dataclass
class Lab:
    runs: pd.DataFrame
    """One row per trained (run, seed), from collect.load_runs."""
    metrics: pd.DataFrame
    """Every record of those seeds, from collect.load_metrics."""

    @classmethod
    def load(cls, root: str | Path, study: str = STUDY) -> "Lab":
        return cls(collect.load_runs(root, study), collect.load_metrics(root, study))

    # ------------------------------------------------------------------ the cells

    def _train_records(self) -> pd.DataFrame:
        return self.metrics[self.metrics["kind"] == "train"]

    def cells(self, grid: str) -> pd.DataFrame:
        """One row per run of the grid (the mean over its seeds): its config, status,
        final validation loss, and the median step time, saved activation bytes and
        tokens of a step. A run its device could not train is a row with status
        `unsupported`, its reason, and no numbers."""
        runs = self.runs[self.runs["grid"] == grid]
        if runs.empty:
            raise ValueError(f"no finished run of grid '{grid}' in study '{STUDY}'")
        train = self._train_records()
        train = train[train["run"].isin(runs["run"])]
        per_run = train.groupby("run").agg(
            step_seconds=("step_time", "median"),
            saved_bytes=("saved_bytes", "median"),
            tokens=("tokens", "median"),
            step_tokens=("tokens", "sum"),
            time=("step_time", "sum"),
            final_train_loss=("loss", lambda s: s.tail(max(len(s) // 10, 1)).mean()),
        )
        per_run["tokens_per_second"] = per_run.pop("step_tokens") / per_run.pop("time")
        first = runs.groupby("run", sort=False).agg(
            status=("status", lambda s: "diverged" if (s == "diverged").any() else s.iloc[0]),
            valid_loss=("valid.loss", "mean"),
            valid_perplexity=("valid.perplexity", "mean"),
            peak_bytes=("peak_memory_bytes", "max"),
            memory_measure=("memory_measure", "first"),
            diverged_step=("diverged_step", "min"),
            reason=("reason", "first"),
        )
        config = runs.drop_duplicates("run").set_index("run")
        config = config[[c for c in config.columns if c.startswith("config.")]]
        config.columns = [c.removeprefix("config.") for c in config.columns]
        table = first.join(config).join(per_run)
        return table.sort_index(key=lambda names: names.map(_cell_number))

    def device(self) -> str:
        """The device and precision line every figure carries."""
        devices = sorted(self.runs["device_description"].dropna().unique())
        return "; ".join(devices)

    def memory_measure(self) -> str:
        measures = sorted(self.runs["memory_measure"].dropna().unique())
        return " / ".join(MEASURES.get(m, m) for m in measures)

    def scale(self) -> str:
        return str(self.runs["scale"].iloc[0])

    # -------------------------------------------------------------- experiments

    def lr_batch(self) -> tuple[pd.DataFrame, str]:
        """Final validation loss by rate (rows) and batch size (columns), and the finding."""
        cells = self.cells("lr_batch")
        table = cells.pivot_table(index="train.lr", columns="train.batch_size", values="valid_loss", aggfunc="first")
        status = cells.pivot_table(index="train.lr", columns="train.batch_size", values="status", aggfunc="first")
        table = table.where(status != "diverged")
        done = cells[cells["status"] == "completed"]
        diverged = cells[cells["status"] == "diverged"]
        epochs = cells["train.epochs"].iloc[0]
        if done.empty:
            return table, f"Every one of the {len(cells)} cells diverged: no rate and batch size trained at this scale."
        best = done.loc[done["valid_loss"].idxmin()]
        per_batch = done.loc[done.groupby("train.batch_size")["valid_loss"].idxmin()]
        best_rates = list(per_batch.sort_values("train.batch_size")["train.lr"])
        if len(set(best_rates)) == 1:
            trend = "the same rate is best at every batch size"
        elif all(a <= b for a, b in zip(best_rates, best_rates[1:])):
            trend = "the best rate grows with the batch size"
        elif all(a >= b for a, b in zip(best_rates, best_rates[1:])):
            trend = "the best rate falls as the batch size grows"
        else:
            trend = "the best rate follows no monotonic trend in the batch size"
        rates = ", ".join(
            f"batch {int(r['train.batch_size'])}: {_rate(r['train.lr'])}"
            for _, r in per_batch.sort_values("train.batch_size").iterrows()
        )
        text = (
            f"With {epochs:g} epoch(s) of training tokens per cell, the lowest validation loss is "
            f"{_loss(best['valid_loss'])} at lr {_rate(best['train.lr'])} with batch {int(best['train.batch_size'])} "
            f"({int(best['tokens'])} tokens per step). Best rate per batch size ({rates}): {trend}. "
            + (f"{len(diverged)} of {len(cells)} cells diverged ("
               + ", ".join(f"lr {_rate(r['train.lr'])} x batch {int(r['train.batch_size'])}"
                           for _, r in diverged.iterrows()) + ")."
               if len(diverged) else f"None of the {len(cells)} cells diverged.")
        )
        return table, text

    def optimizer_lr(self) -> tuple[pd.DataFrame, str]:
        """Per optimizer: its best rate and that cell's loss, beside the loss at every rate."""
        cells = self.cells("optimizer_lr")
        rows = []
        for optimizer, group in cells.groupby("train.optimizer", sort=False):
            done = group[group["status"] == "completed"]
            best = done.loc[done["valid_loss"].idxmin()] if not done.empty else None
            rows.append({
                "optimizer": optimizer,
                "best lr": best["train.lr"] if best is not None else None,
                "best validation loss": best["valid_loss"] if best is not None else None,
                "best validation perplexity": best["valid_perplexity"] if best is not None else None,
                "best run": best.name if best is not None else None,
                "validation loss at each rate": " · ".join(
                    f"{_rate(c['train.lr'])}: " + (f"{c['valid_loss']:.3f}" if c["status"] == "completed" else c["status"])
                    for _, c in group.sort_values("train.lr").iterrows()
                ),
            })
        table = pd.DataFrame(rows).set_index("optimizer")
        ranked = table.dropna(subset=["best validation loss"]).sort_values("best validation loss")
        if ranked.empty:
            return table, "Every cell diverged: no optimizer trained at these rates."
        winner = ranked.iloc[0]
        others = "; ".join(f"{name} {_loss(r['best validation loss'])} at lr {_rate(r['best lr'])}"
                           for name, r in ranked.iloc[1:].iterrows())
        failed = [name for name in table.index if name not in ranked.index]
        text = (
            f"{winner.name} at lr {_rate(winner['best lr'])} reaches the lowest validation loss, "
            f"{_loss(winner['best validation loss'])}, after the same number of steps as every other cell"
            + (f"; the best of the others: {others}" if others else "")
            + (f"; {', '.join(failed)} diverged at every rate" if failed else "")
            + "."
        )
        return table, text

    def best_pairs(self) -> list[str]:
        """The run of each optimizer's best rate (for the curves)."""
        table, _ = self.optimizer_lr()
        return [run for run in table["best run"] if isinstance(run, str)]

    def _cost_table(self, cells: pd.DataFrame, label: str) -> pd.DataFrame:
        return pd.DataFrame({
            label: cells[label],
            "status": cells["status"],
            "tokens per step": cells["tokens"],
            "step time (ms, median)": (cells["step_seconds"] * 1000).round(1),
            "tokens / s": cells["tokens_per_second"].round(0),
            "activations saved per step (MiB, median)": (cells["saved_bytes"] / MIB).round(2),
            "peak memory (MiB)": (cells["peak_bytes"] / MIB).round(1),
            "validation loss": cells["valid_loss"].round(4),
        }).set_index(label)

    def checkpointing(self) -> tuple[pd.DataFrame, str]:
        runs = self.cells("checkpointing")
        cells = runs.set_index("model.checkpointing", drop=False)
        table = self._cost_table(cells, "model.checkpointing")
        if not {"none", "blocks"} <= set(cells.index) or (cells["status"] != "completed").any():
            return table, "Not every cell completed: " + ", ".join(f"{k} {v}" for k, v in cells["status"].items()) + "."
        off, on = cells.loc["none"], cells.loc["blocks"]
        text = (
            f"Checkpointing every block kept {_mib(on['saved_bytes'])} of activations for backward per step "
            f"instead of {_mib(off['saved_bytes'])} ({1 - on['saved_bytes'] / off['saved_bytes']:.0%} less) "
            f"and moved the run's peak from {_mib(off['peak_bytes'])} to {_mib(on['peak_bytes'])}, "
            + self._checkpointing_time(runs.index[runs["model.checkpointing"] == "blocks"][0],
                                       on["step_seconds"] / off["step_seconds"])
            + f"; the final validation losses, {off['valid_loss']:.4f} and {on['valid_loss']:.4f}, "
            + ("agree within 1e-3 (the same computation)." if abs(off["valid_loss"] - on["valid_loss"]) < 1e-3
               else "differ by more than 1e-3.")
        )
        return table, text

    def _checkpointing_time(self, run: str, step_ratio: float) -> str:
        """The time half of the trade: from the checkpointed run's side-by-side timing
        (train/side_by_side.py) where it has one, else from the two runs' own steps."""
        seeds = self.runs[self.runs["run"] == run]
        if {"side_by_side.checkpointed_seconds", "side_by_side.plain_seconds"} <= set(seeds.columns):
            checkpointed = seeds["side_by_side.checkpointed_seconds"].median()
            plain = seeds["side_by_side.plain_seconds"].median()
            ratio = checkpointed / plain
            return (f"at {ratio:.2f}x the forward and backward time, timed side by side in one process "
                    f"({checkpointed * 1000:,.1f} ms checkpointed, {plain * 1000:,.1f} ms without)"
                    + (" (each block's forward runs twice)" if ratio >= 1 else ""))
        if step_ratio >= 1:
            return f"at {step_ratio:.2f}x the median step time (each block's forward runs twice)"
        return (f"with a median step {step_ratio:.2f}x the plain run's: the recomputation's cost did not show "
                "through the noise of this machine's shared cores")

    def grad_quality(self) -> pd.DataFrame:
        """Per run of the micro-batch grid, the agreement of its accumulated gradient with
        the full-batch gradient on the same tokens, over its measurements (at every evaluation)."""
        records = self.metrics[self.metrics["kind"] == "grad_quality"] if "kind" in self.metrics else pd.DataFrame()
        if records.empty:
            return pd.DataFrame(columns=["min cosine", "max relative difference", "measurements"])
        return records.groupby("run").agg(**{
            "min cosine": ("grad_cosine", "min"),
            "max relative difference": ("grad_rel_diff", "max"),
            "measurements": ("step", "count"),
        })

    def micro_batches(self) -> tuple[pd.DataFrame, str]:
        cells = self.cells("micro_batches")
        quality = self.grad_quality()
        table = self._cost_table(cells.set_index("train.micro_batches", drop=False), "train.micro_batches")
        table.insert(1, "sequences per micro-batch", (cells["train.batch_size"] // cells["train.micro_batches"]).values)
        table["gradient cosine (min)"] = cells.index.map(quality["min cosine"]).values if not quality.empty else None
        table["gradient relative difference (max)"] = (
            cells.index.map(quality["max relative difference"]).values if not quality.empty else None)
        done = cells[cells["status"] == "completed"].sort_values("train.micro_batches")
        if len(done) < 2:
            return table, "Fewer than two splits completed: nothing to compare."
        whole, finest = done.iloc[0], done.iloc[-1]
        split = quality.reindex(done.index[1:]).dropna()
        agreement = (
            f"; over every split and measurement, the accumulated gradient's cosine with the full-batch gradient "
            f"on the same tokens was at least {split['min cosine'].min():.7f} and their relative difference at most "
            f"{split['max relative difference'].max():.1e}" if not split.empty else
            "; no gradient-quality measurement was recorded"
        )
        text = (
            f"Splitting the {int(whole['train.batch_size'])}-sequence batch into {int(finest['train.micro_batches'])} "
            f"micro-batches cut the activations kept for backward from {_mib(whole['saved_bytes'])} to "
            f"{_mib(finest['saved_bytes'])} per step ({whole['saved_bytes'] / finest['saved_bytes']:.1f}x less) and the "
            f"peak from {_mib(whole['peak_bytes'])} to {_mib(finest['peak_bytes'])}, at "
            f"{finest['step_seconds'] / whole['step_seconds']:.2f}x the median step time{agreement}."
        )
        return table, text

    def precision(self) -> tuple[pd.DataFrame, str]:
        cells = self.cells("precision").set_index("train.precision", drop=False)
        table = self._cost_table(cells, "train.precision")
        table["not run because"] = cells["reason"].fillna("").values
        if "fp32" not in cells.index or cells.loc["fp32", "status"] != "completed":
            return table, "The fp32 reference cell did not complete: " + str(cells["status"].to_dict()) + "."
        base = cells.loc["fp32"]
        parts = []
        for precision, cell in cells.iterrows():
            if precision == "fp32":
                continue
            if cell["status"] == "unsupported":
                parts.append(f"{precision} was not run: {cell['reason']}")
            elif cell["status"] == "diverged":
                parts.append(f"{precision} diverged at step {int(cell['diverged_step'])}")
            else:
                parts.append(
                    f"{precision} autocast ran at {cell['step_seconds'] / base['step_seconds']:.2f}x fp32's median step "
                    f"time with {cell['saved_bytes'] / base['saved_bytes']:.2f}x its activation bytes per step and "
                    f"{cell['peak_bytes'] / base['peak_bytes']:.2f}x its peak, final validation loss "
                    f"{cell['valid_loss']:.4f} against fp32's {base['valid_loss']:.4f}"
                )
        return table, "; ".join(parts) + "."

    def attention_length(self) -> tuple[pd.DataFrame, str]:
        """Per context length: step time, saved activation bytes and peak of each attention."""
        cells = self.cells("attention_length")
        done = cells[cells["status"] == "completed"]
        wide = done.pivot_table(index="train.bptt", columns="model.attention",
                                values=["step_seconds", "saved_bytes", "peak_bytes"], aggfunc="first")
        table = pd.DataFrame(index=wide.index)
        table["sequences per step"] = done.groupby("train.bptt")["train.batch_size"].first()
        for attention in ("manual", "sdpa"):
            if ("step_seconds", attention) in wide:
                table[f"{attention} step (ms)"] = (wide["step_seconds", attention] * 1000).round(1)
                table[f"{attention} activations (MiB)"] = (wide["saved_bytes", attention] / MIB).round(2)
                table[f"{attention} peak (MiB)"] = (wide["peak_bytes", attention] / MIB).round(1)
        if not {("step_seconds", "manual"), ("step_seconds", "sdpa")} <= set(wide.columns):
            return table, "Not every cell completed: " + ", ".join(f"{r} {s}" for r, s in cells["status"].items()) + "."
        time_ratio = wide["step_seconds", "manual"] / wide["step_seconds", "sdpa"]
        gap = wide["saved_bytes", "manual"] - wide["saved_bytes", "sdpa"]
        table["manual / sdpa time"] = time_ratio.round(2)
        table["manual - sdpa activations (MiB)"] = (gap / MIB).round(2)
        lengths = time_ratio.dropna().index
        short, long = lengths.min(), lengths.max()
        grows = gap[long] > 0 and gap[long] > 1.5 * max(gap[short], 0)
        text = (
            f"At {long} tokens of context the hand-coded attention kept {_mib(gap[long])} more activations for "
            f"backward per step than SDPA ({_mib(wide['saved_bytes', 'manual'][long])} against "
            f"{_mib(wide['saved_bytes', 'sdpa'][long])}), at {short} tokens {_mib(gap[short])} more, the tokens per "
            "step being the same at every length: "
            + (f"the gap grows {gap[long] / gap[short]:.1f}x from the shortest context to the longest, as the "
               "T x T attention weights the hand-coded version keeps do (at fixed tokens per step they grow "
               "linearly with T)" if grows and gap[short] > 0 else
               "the gap grows with the context, as the T x T attention weights the hand-coded version keeps do"
               if grows else "the gap does not grow with the context at this scale")
            + f". Its median step took {time_ratio[long]:.2f}x SDPA's at {long} tokens and "
              f"{time_ratio[short]:.2f}x at {short}."
        )
        return table, text

    def norm_warmup(self) -> tuple[pd.DataFrame, str]:
        """Final loss per (norm, warmup) and the verdict on the reference's expectation."""
        cells = self.cells("norm_warmup")
        table = pd.DataFrame({
            "norm": cells["model.norm"],
            "warmup steps": cells["train.warmup_steps"].astype(int),
            "status": cells["status"],
            "validation loss": cells["valid_loss"].round(4),
            "validation perplexity": cells["valid_perplexity"].round(1),
            "final training loss": cells["final_train_loss"].round(4),
        }).set_index(["norm", "warmup steps"]).sort_index()

        def loss(norm: str, warm: bool) -> float:
            row = cells[(cells["model.norm"] == norm) & ((cells["train.warmup_steps"] > 0) == warm)]
            if row.empty or row["status"].iloc[0] != "completed":
                return math.inf  # diverged or missing: worse than any loss
            return float(row["valid_loss"].iloc[0])

        pre_cold, post_cold, post_warm = loss("pre", False), loss("post", False), loss("post", True)
        pre_wins = pre_cold < post_cold - SIMILAR
        post_needs = post_warm < post_cold - SIMILAR
        shown = {k: ("diverged" if not math.isfinite(v) else f"{v:.3f}")
                 for k, v in {"pre": pre_cold, "post": post_cold, "post_warm": post_warm}.items()}
        verdict = ("holds" if pre_wins and post_needs else
                   "holds in part" if pre_wins or post_needs else "does not hold")
        text = (
            f"Without warmup, pre-LN reached validation loss {shown['pre']} and post-LN {shown['post']}; "
            f"with warmup, post-LN reached {shown['post_warm']}. The reference's expectation (pre-LN trains "
            f"without warmup to a lower loss; post-LN needs warmup) {verdict} at this scale: pre-LN without "
            f"warmup {'beats' if pre_wins else 'does not beat'} post-LN without it by more than {SIMILAR}, and "
            f"warmup {'helps' if post_needs else 'does not help'} post-LN by more than {SIMILAR}."
        )
        return table, text

    def every_cell(self) -> pd.DataFrame:
        """Every run of every grid: its varied values, status and costs."""
        variants = self.runs.drop_duplicates("run").set_index("run")["variant"]
        frames = {}
        for grid in EXPERIMENTS:
            cells = self.cells(grid)
            frames[grid] = pd.DataFrame({
                "variant": variants.reindex(cells.index).fillna(""),
                "status": cells["status"],
                "validation loss": cells["valid_loss"].round(4),
                "step time (ms, median)": (cells["step_seconds"] * 1000).round(1),
                "activations saved per step (MiB)": (cells["saved_bytes"] / MIB).round(2),
                "peak memory (MiB)": (cells["peak_bytes"] / MIB).round(1),
            })
        return pd.concat(frames, names=["grid", "run"])

    # --------------------------------------------------------------------- summary

    def findings(self) -> dict[str, str]:
        """Grid -> its finding sentence, for every experiment (the page's summary table)."""
        return {grid: getattr(self, grid)()[1] for grid in EXPERIMENTS}

    def summary_table(self) -> str:
        """Markdown: experiment (a link to its section), what it found."""
        lines = ["| experiment | what it found at this scale |", "|---|---|"]
        for grid, text in self.findings().items():
            lines.append(f"| [{EXPERIMENTS[grid]}](#{grid}) | {text.replace('|', '/')} |")
        return "\n".join(lines)


def _cell_number(run: str) -> int:
    """`lr_batch-12` -> 12: cells in grid order, not string order."""
    tail = run.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
