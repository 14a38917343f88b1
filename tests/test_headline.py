"""The index's one-line headline per study, from its study table."""

from __future__ import annotations

import pandas as pd

from tdiag.report.headline import headline


def test_toy_headline_counts_solved_tasks_and_names_the_worst():
    runs = pd.DataFrame({"run": ["copy", "polynomial", "qk_wo-1"], "grid": [None, None, "qk_wo"],
                         "test.exact_match": [1.0, 0.081, 0.2], "status": ["completed"] * 3})
    assert headline("toy", runs) == "1 of 2 tasks at test exact match 1.0 (lowest: polynomial 0.081)"


def test_lm_headline_names_the_best_run():
    runs = pd.DataFrame({"run": ["a", "b", "c"], "status": ["completed", "completed", "diverged"],
                         "valid.perplexity": [812.0, 796.8, None]})
    assert headline("lm", runs) == "lowest final validation perplexity 796.8 (b), highest 812.0"


def test_lab_headline_is_the_best_lr_batch_cell():
    runs = pd.DataFrame({"run": ["lr_batch-1", "lr_batch-2", "precision-1"], "grid": ["lr_batch", "lr_batch", "precision"],
                         "status": ["completed"] * 3, "valid.loss": [6.9, 6.6, 1.0],
                         "config.train.lr": [1e-3, 3e-3, 1e-3], "config.train.batch_size": [10, 5, 10]})
    assert headline("lab", runs) == "best learning rate x batch cell: lr 0.003, batch 5 (final validation loss 6.600)"


def test_a_table_without_the_headline_column_still_gives_a_line():
    runs = pd.DataFrame({"run": ["overfit"], "status": ["completed"], "test.bleu": [0.4]})
    assert headline("wmt14", runs) == "1 run (no 'train.bleu' in its table)"
    assert headline("mine", runs) == "1 run"
