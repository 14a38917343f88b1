"""The lm page's tables and curves (report/language_model.py) on small synthetic records:
a row per evaluation, with the training loss of the steps since the one before."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from tdiag.report import language_model as lm

PER_EPOCH = 6
"""Steps an epoch; evaluations every 3 steps: two an epoch, the second at its end."""


def records(run: str, losses: list[float], valid: dict[int, float], tokens=(10, 30)) -> list[dict]:
    """Training steps 1..len(losses) (alternately 10 and 30 tokens) and validation
    evaluations at the steps of `valid` (step 0 included), a second of wall clock a step."""
    out = [{"run": run, "seed": 0, "kind": "eval", "split": "valid", "step": step, "epoch": step / PER_EPOCH,
            "loss": loss, "perplexity": math.exp(loss), "wall_seconds": float(step) if step else None}
           for step, loss in valid.items()]
    out += [{"run": run, "seed": 0, "kind": "train", "step": step, "loss": loss, "tokens": tokens[step % 2],
             "step_time": 0.5, "epoch": step / PER_EPOCH, "wall_seconds": float(step)}
            for step, loss in enumerate(losses, start=1)]
    return out


def runs_frame(*names: str) -> pd.DataFrame:
    return pd.DataFrame([{
        "run": name, "seed": 0, "config.model.arch": "gpt" if "gpt" in name else "lstm", "config.model.n_layers": 1,
        "config.train.optimizer": "adamw", "config.train.lr": 1e-3, "parameters": 1000,
        "test.perplexity": 50.0, "wall_seconds": 20.0, "peak_memory_bytes": 2**20,
        "memory_measure": "cpu_tensor_bytes",
    } for name in names])


LOSSES = [6.0, 5.0, 4.0, 4.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 1.0, 1.0]
VALID = {0: 9.0, 3: 5.0, 6: 4.0, 9: 3.5, 12: 3.8}


@pytest.fixture
def metrics() -> pd.DataFrame:
    return pd.DataFrame(records("06-gpt-1l-adamw", LOSSES, VALID))


def weighted(losses: list[float], first_step: int) -> float:
    tokens = [(10, 30)[step % 2] for step in range(first_step, first_step + len(losses))]
    return sum(l * t for l, t in zip(losses, tokens)) / sum(tokens)


def test_the_evaluation_table_has_a_row_per_evaluation_with_the_training_loss_since_the_one_before(metrics):
    table = lm.evaluation_table(metrics, runs_frame("06-gpt-1l-adamw"))
    assert list(table["step"]) == [3, 6, 9, 12]
    assert list(table["epoch"]) == [0.5, 1.0, 1.5, 2.0]
    assert list(table["valid_loss"]) == [5.0, 4.0, 3.5, 3.8]
    assert list(table["wall_seconds"]) == [3.0, 6.0, 9.0, 12.0]
    expected = [weighted(LOSSES[i:i + 3], i + 1) for i in (0, 3, 6, 9)]
    assert list(table["train_loss"]) == pytest.approx(expected)
    assert list(table["train_ppl"]) == pytest.approx([math.exp(v) for v in expected])
    assert list(table["train_steps"]) == [3, 3, 3, 3] and list(table["tokens"]) == [70, 50, 70, 50]


def test_the_epoch_table_keeps_each_epochs_end_with_the_whole_epochs_training_loss(metrics):
    table = lm.epoch_table(metrics, runs_frame("06-gpt-1l-adamw"))
    assert list(table["epoch"]) == [1, 2] and list(table["valid_loss"]) == [4.0, 3.8]
    assert list(table["train_loss"]) == pytest.approx([weighted(LOSSES[:6], 1), weighted(LOSSES[6:], 7)])


def test_a_diverged_seeds_steps_after_its_last_evaluation_count_nowhere():
    losses = [*LOSSES[:7], None]  # diverged at step 8: its record has no loss, and no evaluation follows
    metrics = pd.DataFrame(records("06-gpt-1l-adamw", losses, {0: 9.0, 3: 5.0, 6: 4.0}))
    table = lm.evaluation_table(metrics, runs_frame("06-gpt-1l-adamw"))
    assert list(table["step"]) == [3, 6] and table["tokens"].sum() == 120


def test_the_results_table_reports_the_best_evaluation_and_the_training_perplexity_of_its_interval(metrics):
    runs = runs_frame("06-gpt-1l-adamw")
    results = lm.results_table(lm.evaluation_table(metrics, runs), runs)
    row = results.iloc[0]
    assert row["best valid PPL"] == round(math.exp(3.5), 1)
    assert row["at epoch"] == 1.5
    assert row["train PPL since the evaluation before"] == round(math.exp(weighted(LOSSES[6:9], 7)), 1)
    assert row["wall-clock to best (s)"] == 9.0
    assert row["train tokens/s"] == round(240 / 6.0)  # every step's tokens over every step's time


def drawn(ax) -> list[tuple[str, list[float]]]:
    """(line style, x values) of each curve on the axes (legend swatches left out)."""
    return [(line.get_linestyle(), [float(v) for v in line.get_xdata()]) for line in ax.get_lines()
            if len(line.get_xdata()) > 1]


AT = {"epoch": [0.5, 1.0, 1.5, 2.0], "wall_seconds": [3.0, 6.0, 9.0, 12.0]}
"""Each axis's value at the four evaluations after step 0."""


@pytest.mark.parametrize("x", ["epoch", "wall_seconds"])
def test_the_curves_draw_training_and_validation_at_every_evaluation(x: str):
    metrics = pd.DataFrame(records("06-gpt-1l-adamw", LOSSES, VALID) + records("02-lstm-1l-adamw", LOSSES, VALID))
    runs = runs_frame("06-gpt-1l-adamw", "02-lstm-1l-adamw")
    evaluations = lm.evaluation_table(metrics, runs)
    for fig in (lm.optimizer_curves(evaluations, x), lm.depth_curves(evaluations, x), lm.overfitting(evaluations, x)):
        for ax in fig.axes:  # one run per architecture: its validation (solid) and training (dashed) curve
            assert sorted(drawn(ax)) == [("-", AT[x]), ("--", AT[x])]
        plt.close(fig)
    fig = lm.best_runs_curves(evaluations, lm.results_table(evaluations, runs))
    for ax, axis in zip(fig.axes, ("epoch", "wall_seconds")):  # both runs, by epoch then by wall clock
        assert sorted(drawn(ax)) == [("-", AT[axis])] * 2 + [("--", AT[axis])] * 2
