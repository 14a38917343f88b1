"""The pages' tables: one header row, one format per column, nothing like NaN in a cell;
sample decodes whole, with the wrong tokens of the hypothesis marked."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tdiag.report import tables


def _header_rows(table: str) -> list[list[str]]:
    head = re.search(r"<thead>(.*)</thead>", table).group(1)
    return [re.findall(r"<th[^>]*>(.*?)</th>", row) for row in re.findall(r"<tr>(.*?)</tr>", head)]


def _cells(table: str) -> list[list[str]]:
    body = re.search(r"<tbody>(.*)</tbody>", table).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_a_multi_index_becomes_columns_under_one_header_row_and_missing_values_show_as_a_dash():
    frame = pd.DataFrame({
        "run": ["copy", "copy"], "seed": [0, 1], "status": ["completed", "diverged"],
        "diverged at step": pd.array([None, 120], dtype="Int64"), "test BLEU": [12.5, np.nan],
        "note": [None, "x"],
    }).set_index(["run", "seed"])
    table = tables.html(frame)
    assert _header_rows(table) == [["run", "seed", "status", "diverged at step", "test BLEU", "note"]]
    assert _cells(table) == [["copy", "0", "completed", "—", "12.5", "—"], ["copy", "1", "diverged", "120", "—", "x"]]
    assert not re.search(r"NaN|&lt;NA&gt;|None", table)


def test_numbers_have_one_format_per_column():
    frame = pd.DataFrame({
        "parameters": [1234567, 89], "loss": [2.5, 3.1234], "wall time (s)": [1.0, 2.0],
        "lr": [1e-3, 3e-4], "best lr": [1.0, np.nan], "many decimals": [1 / 3, 2 / 3],
        "valid perplexity": [13011.1234, 5.0],
    })
    assert _cells(tables.html(frame)) == [
        ["1,234,567", "2.5000", "1", "0.001", "1", "0.3333", "13,011.1"],
        ["89", "3.1234", "2", "0.0003", "—", "0.6667", "5.0"],
    ]


def test_numbers_align_right_and_text_left():
    table = tables.html(pd.DataFrame({"run": ["a"], "steps": [3]}))
    assert "<th>run</th>" in table and '<th class="num">steps</th>' in table
    assert "<td>a</td>" in table and '<td class="num">3</td>' in table


def test_row_numbers_are_dropped_and_a_column_kept_as_index_is_not_repeated():
    assert _header_rows(tables.html(pd.DataFrame({"a": [1, 2]}).iloc[1:]))[0] == ["a"]
    kept = pd.DataFrame({"precision": ["fp32"], "loss": [1.5]}).set_index("precision", drop=False)
    assert _header_rows(tables.html(kept))[0] == ["precision", "loss"]
    labelled = pd.DataFrame({"value": [1]}, index=["corpus"])
    assert _header_rows(tables.html(labelled))[0] == ["", "value"] and _cells(tables.html(labelled)) == [["corpus", "1"]]


def test_a_pivot_names_its_column_axis_in_each_header_and_formats_its_cells_alike():
    cells = pd.DataFrame({"train.lr": [1e-3, 1e-3, 1e-2], "batch": [8, 16, 8], "loss": [1.23456, 2.0, np.nan]})
    pivot = cells.pivot(index="train.lr", columns="batch", values="loss")
    table = tables.html(pivot)
    assert _header_rows(table) == [["train.lr", "batch=8", "batch=16"]]
    assert _cells(table) == [["0.001", "1.2346", "2.0000"], ["0.01", "—", "—"]]


def test_text_is_escaped_a_long_signature_may_break_after_its_separators_and_a_run_name_not_at_all():
    signature = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.3"
    table = tables.html(pd.DataFrame({"text": ["<b>bold</b> & co"], "signature": [signature], "run": ["qk_wo-1"]}))
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in table and "<b>" not in table
    assert "nrefs:1|<wbr>case:mixed|<wbr>eff:no|" in table
    assert '<span class="tdiag-word">qk_wo-1</span>' in table


def test_a_notebook_draws_every_dataframe_it_displays_as_such_a_table():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        tables.use_for_dataframes()
        shown, _ = shell.display_formatter.format(pd.DataFrame({"x": [np.nan]}).rename_axis("run"))
    finally:
        InteractiveShell.clear_instance()
    assert shown["text/html"].startswith('<table class="tdiag-table">') and "—" in shown["text/html"]


@pytest.mark.parametrize("hypothesis, reference, shown", [
    ("17 4 18 18", "17 4 16 18", "17 4 <mark>18</mark> 18"),  # same length: position by position
    ("4 10 15 15", "4 5 13 3", "4 <mark>10 15 15</mark>"),
    ("2012-02-10", "2014-11-04", "201<mark>2</mark>-<mark>02</mark>-<mark>10</mark>"),  # one token each: characters
    ("le chat très noir ici", "le chat noir", "le chat <mark>très</mark> noir <mark>ici</mark>"),  # aligned
    ("le chat noir", "le chat est noir", 'le chat <mark title="missing: est">‸</mark> noir'),
    ("a <b> & c", "a b & c", "a <mark>&lt;b&gt;</mark> &amp; c"),
    ("", "le chat", "<mark>(empty)</mark>"),
    ("same words", "same words", "same words"),
])
def test_mark_differences_marks_the_hypothesis_tokens_that_differ_from_the_reference(hypothesis, reference, shown):
    assert tables.mark_differences(hypothesis, reference) == shown


def test_sample_decodes_are_shown_whole_as_source_reference_hypothesis():
    long_source = " ".join(f"word{i}" for i in range(200))
    frame = pd.DataFrame({"run": ["r"], "split": ["test"], "prompt": [long_source], "continuation": ["the cat"],
                          "reference": ["the dog"]})
    samples = tables.samples(frame, ["run"], source="prompt", hypothesis="continuation",
                             headers=("prompt", "what follows", "continuation"))
    table = samples._repr_html_()
    assert 'class="tdiag-table tdiag-samples"' in table
    assert _header_rows(table) == [["run", "prompt", "what follows", "continuation"]]
    assert _cells(table) == [["r", long_source, "the dog", "the <mark>cat</mark>"]]
