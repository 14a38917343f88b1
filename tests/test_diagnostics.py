"""The training-diagnostics figure (report/diagnostics.py) on small synthetic records."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from tdiag.report.diagnostics import not_trained, training_diagnostics

STEPS = 40


def train_records(run: str, layers: list[str], seed: int = 0, steps: int = STEPS, **extra) -> list[dict]:
    return [
        {"run": run, "seed": seed, "kind": "train", "step": s, "loss": 5.0 / s, "lr": 1e-3, "grad_norm": 1.0 + s,
         "step_time": 0.05, "tokens": 350, "peak_memory_bytes": (10 + s) * 2**20,
         **{f"act_norm/{layer}": 1.0 + i for i, layer in enumerate(layers)}, **extra}
        for s in range(1, steps + 1)
    ]


def runs_frame(*rows: dict) -> pd.DataFrame:
    defaults = {"seed": 0, "status": "completed", "memory_measure": "cpu_tensor_bytes", "variant": "", "reason": None}
    return pd.DataFrame([{**defaults, **row} for row in rows])


def metrics_frame(*records: list[dict]) -> pd.DataFrame:
    evals = [{"run": r[0]["run"], "seed": 0, "kind": "eval", "split": "valid", "step": 0, "loss": 9.0} for r in records]
    return pd.DataFrame([*evals, *(rec for rs in records for rec in rs)])


def ylabels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_every_recorded_diagnostic_has_a_panel_labelled_in_words():
    metrics = metrics_frame(train_records("gpt", ["layer.0", "layer.1"]), train_records("lstm", ["embedding", "lstm"]))
    fig = training_diagnostics(metrics, runs_frame({"run": "gpt"}, {"run": "lstm"}))
    labels = ylabels(fig)
    assert len(labels) == 6
    for words in ("learning rate", "global gradient norm", "activation norm, largest layer", "step time (ms",
                  "tokens per step", "peak memory (MiB)"):
        assert sum(words in label for label in labels) == 1, words
    assert {ax.get_xlabel() for ax in fig.axes[3:]} == {"optimizer step"}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["gpt", "lstm"]
    # a line per run on the activation panel: the largest layer's norm, 2.0 for both
    activation = fig.axes[2]
    assert [list(line.get_ydata()[:1]) for line in activation.get_lines()] == [[2.0], [2.0]]


def test_a_measure_no_selected_run_records_has_no_panel():
    records = [{k: v for k, v in r.items() if k != "tokens"} for r in train_records("lstm", ["embedding", "lstm"])]
    fig = training_diagnostics(metrics_frame(records), runs_frame({"run": "lstm"}))
    assert len(fig.axes) == 5
    assert not any("tokens" in label for label in ylabels(fig))


@pytest.mark.parametrize("measure, words", [("cpu_tensor_bytes", "tensor bytes held (CPU)"),
                                            ("cuda_max_allocated", "peak allocated CUDA memory")])
def test_the_memory_panel_names_its_measure(measure: str, words: str):
    fig = training_diagnostics(metrics_frame(train_records("a", ["layer.0"])),
                               runs_frame({"run": "a", "memory_measure": measure}))
    memory = [label for label in ylabels(fig) if label.startswith("peak memory (MiB)")]
    assert len(memory) == 1 and words in memory[0]
    assert max(fig.axes[ylabels(fig).index(memory[0])].get_lines()[0].get_ydata()) == 10 + STEPS  # MiB


@pytest.mark.parametrize("layers", [["layer.0", "layer.1", "layer.2", "layer.10"],
                                    ["encoder.0", "encoder.1", "decoder.0", "decoder.1"], ["embedding", "lstm"]])
def test_one_run_draws_each_layer_in_forward_order(layers: list[str]):
    records = train_records("a", sorted(layers))  # recorded in alphabetical order (metrics.jsonl's sorted keys)
    fig = training_diagnostics(metrics_frame(records), runs_frame({"run": "a"}))
    activation = next(ax for ax in fig.axes if "activation norm per layer" in ax.get_ylabel())
    assert [t.get_text() for t in activation.get_legend().get_texts()] == layers


def test_a_run_not_trained_is_named_not_drawn():
    runs = runs_frame({"run": "fp32", "variant": "precision=fp32"},
                      {"run": "fp16", "variant": "precision=fp16", "status": "unsupported",
                       "reason": "fp16 needs CUDA"})
    fig = training_diagnostics(metrics_frame(train_records("fp32", ["layer.0"])), runs, label="variant")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["precision=fp32"]
    assert "precision=fp16 (fp16 needs CUDA)" in fig._suptitle.get_text()
    assert training_diagnostics(metrics_frame(train_records("fp32", ["layer.0"])), runs.iloc[[1]]) is None
    assert "fp16 needs CUDA" in not_trained(runs)


def test_a_diverged_seed_ends_early_and_is_marked():
    diverged = train_records("b", ["layer.0"], steps=10)
    diverged[-1].update(loss=None, grad_norm=None, diverged=True)
    metrics = metrics_frame(train_records("a", ["layer.0"]), diverged)
    fig = training_diagnostics(metrics, runs_frame({"run": "a"}, {"run": "b", "status": "diverged"}))
    assert "b seed 0 diverged at step 10" in fig._suptitle.get_text()
    for ax in fig.axes:
        assert any(list(line.get_xdata()) == [10, 10] for line in ax.get_lines())  # the dotted line
    gradient = next(ax for ax in fig.axes if "gradient" in ax.get_ylabel())
    assert [len(line.get_xdata()) for line in gradient.get_lines()[:2]] == [STEPS, 10]


def test_the_learning_rate_axis_is_logarithmic_for_runs_at_rates_decades_apart_only():
    apart = metrics_frame(train_records("sgd", ["layer.0"], lr=1.0), train_records("adam", ["layer.0"], lr=1e-3))
    fig = training_diagnostics(apart, runs_frame({"run": "sgd"}, {"run": "adam"}))
    assert fig.axes[0].get_ylabel() == "learning rate" and fig.axes[0].get_yscale() == "log"
    warmup = train_records("warmup", ["layer.0"])
    for record in warmup:  # a linear warmup from near zero spans decades within one run
        record["lr"] = 1e-5 * record["step"]
    fig = training_diagnostics(metrics_frame(warmup), runs_frame({"run": "warmup"}))
    assert fig.axes[0].get_yscale() == "linear"


def test_a_grid_of_long_variant_labels_keeps_its_legend_within_the_figure():
    variants = [f"embedding_std=inv_sqrt_d, position_std_ratio=0.7071, positions=learned, run {i}" for i in range(6)]
    metrics = metrics_frame(*(train_records(f"embedding-{i}", ["encoder.0"]) for i in range(6)))
    runs = runs_frame(*({"run": f"embedding-{i}", "variant": v} for i, v in enumerate(variants)))
    fig = training_diagnostics(metrics, runs, label="variant")
    fig.canvas.draw()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == variants
    assert legend.get_window_extent().width <= fig.bbox.width
