"""The report pages' HTML tables: every column a header of its own (no index, no index-name
row), one number format per column, no `NaN`/`<NA>`/`None` in a cell, and sample decodes
with the hypothesis tokens that differ from the reference marked.

A page calls `use_for_dataframes()` once: from then on every DataFrame it displays is
drawn by `html`, so the report functions keep returning plain DataFrames (their tests
read the data) and no cell formats a table by hand. The page template's CSS
(templates/offline) wraps long cells and aligns numbers right.
"""

from __future__ import annotations

import difflib
import itertools
import html as html_text
import math
import re
from dataclasses import dataclass
from typing import Callable

import pandas as pd

NA = "—"
"""What a missing value (NaN, None, <NA>) shows as."""

MAX_DECIMALS = 4
"""A float column shows the decimals its values need, at most this many."""

LONG_WORD = 24
"""A word longer than this (a sacreBLEU signature, a URL) may break after its separators
(`<wbr>`), so that its column stays narrow enough for the table to fit the page."""
SEPARATOR_END = re.compile(r"(?<=[|/,;&])")

RATE = re.compile(r"(^|[ ._])lr$")
"""A learning-rate column (`lr`, `best lr`, `train.lr`): its values span decades, so they
are shown as written (`0.0003`, `1e-05`), not to a fixed number of decimals."""
PERPLEXITY = re.compile(r"perplexity|ppl", re.IGNORECASE)
"""A perplexity column: one decimal (its values run to thousands at smoke scale)."""

Format = Callable[[object], str]


def _is_na(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array is a value, not a missing one
        return False


def _word(word: str) -> str:
    if len(word) > LONG_WORD:
        return "<wbr>".join(html_text.escape(part) for part in SEPARATOR_END.split(word))
    if "-" in word:  # a run name (`qk_wo-1`, `01-lstm-1l-adam`) is not broken at its hyphens
        return f'<span class="tdiag-word">{html_text.escape(word)}</span>'
    return html_text.escape(word)


def _text(text: str) -> str:
    """Text as HTML: escaped; a long word may break after its separators, a short one
    with hyphens not at all."""
    return "".join(_word(word) for word in re.split(r"(\s+)", text))


def _decimals(value: float) -> int:
    """The fewest decimals (at most MAX_DECIMALS) that show `value` as rounded to MAX_DECIMALS."""
    text = f"{value:.{MAX_DECIMALS}f}".rstrip("0")
    return len(text.split(".")[1])


def column_format(name: str, values: pd.Series) -> Format:
    """One format for every value of a column, chosen from its kind: counts (integers)
    with thousands separators, rates as written, perplexities to one decimal, other
    floats to the decimals the column needs (the report functions round each column to
    its precision), text as it is."""
    if pd.api.types.is_bool_dtype(values):
        return str
    if pd.api.types.is_integer_dtype(values):
        return lambda v: f"{int(v):,}"
    if pd.api.types.is_float_dtype(values):
        if RATE.search(str(name)):
            return lambda v: f"{v:g}"
        if PERPLEXITY.search(str(name)):
            return lambda v: f"{v:,.1f}"
        finite = [float(v) for v in values.dropna() if math.isfinite(v)]
        places = max((_decimals(v) for v in finite), default=0)
        return lambda v: f"{v:,.{places}f}"
    return str


def _header(label) -> str:
    """A column label as one header: the parts of a MultiIndex label joined."""
    if isinstance(label, tuple):
        return " / ".join(str(part) for part in label if str(part))
    return str(label)


def flat(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its index as ordinary first columns and one header row: named index
    levels become columns (one already a column, `set_index(..., drop=False)`, is not
    repeated), an unnamed row number is dropped, and a named column axis (a pivot's) goes
    into each header (`train.batch_size=8`)."""
    index = frame.index
    row_numbers = index.nlevels == 1 and index.name is None and pd.api.types.is_integer_dtype(index)
    levels = [] if row_numbers else [
        i for i, name in enumerate(index.names) if name is None or name not in frame.columns
    ]
    axis = frame.columns.name if frame.columns.nlevels == 1 else None
    headers = [str(index.names[i] or "") for i in levels] + [
        _header(label) if axis is None else f"{axis}={_header(label)}" for label in frame.columns
    ]
    parts = [pd.Series(index.get_level_values(i)) for i in levels]
    out = pd.concat([*parts, frame.reset_index(drop=True)], axis=1, ignore_index=True)
    out.columns = headers
    return out


def html(frame: pd.DataFrame, raw_html: frozenset[str] = frozenset(), classes: str = "tdiag-table") -> str:
    """The frame as an HTML table (see `flat` and `column_format`); the cells of the
    `raw_html` columns are HTML already. The value columns of a pivot (a named column
    axis) are one quantity: one format."""
    table = flat(frame)
    formats: dict[str, Format] = {}
    if frame.columns.name is not None and all(pd.api.types.is_float_dtype(t) for t in frame.dtypes):
        values = table.iloc[:, len(table.columns) - len(frame.columns):]
        shared = column_format(str(frame.columns.name), pd.concat([values[c] for c in values.columns]))
        formats = {name: shared for name in values.columns}
    kinds = []
    for position, name in enumerate(table.columns):
        values = table.iloc[:, position]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        kinds.append((formats.get(name) or column_format(name, values), numeric, name in raw_html))
    head = "".join(f'<th class="num">{_text(name)}</th>' if numeric else f"<th>{_text(name)}</th>"
                   for name, (_, numeric, _) in zip(table.columns, kinds))
    rows = []
    for row in table.itertuples(index=False):
        cells = []
        for value, (fmt, numeric, raw) in zip(row, kinds):
            text = NA if _is_na(value) else fmt(value)
            cells.append(f'<td class="num">{html_text.escape(text)}</td>' if numeric else
                         f"<td>{text if raw else _text(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def use_for_dataframes() -> None:
    """Draw every DataFrame the running notebook displays with `html`."""
    from IPython import get_ipython

    get_ipython().display_formatter.formatters["text/html"].for_type(pd.DataFrame, html)


def _units(reference: str, hypothesis: str) -> tuple[list[str], list[str], str]:
    """The two texts as whitespace-separated tokens, or as characters when both are one
    token each (the character-level tasks show `1981-04-11`, not `1 9 8 1 - ...`); and
    the joiner that puts the units back together."""
    if len(reference.split()) <= 1 and len(hypothesis.split()) <= 1:
        return list(reference.strip()), list(hypothesis.strip()), ""
    return reference.split(), hypothesis.split(), " "


def mark_differences(hypothesis: str, reference: str) -> str:
    """The hypothesis as HTML, each run of its tokens that differs from the reference in
    `<mark>`, and a marked caret (‸, the missing words in its title) where it drops
    reference words. Of the same length, the two are compared position by position (a
    copy or a date of the toy tasks); otherwise difflib aligns them, so that one inserted
    or dropped word of a translation marks only itself, not everything after it. A
    hypothesis with no token at all shows as a marked "(empty)"."""
    expected, tokens, joiner = _units(reference, hypothesis)
    if not tokens:
        return "<mark>(empty)</mark>" if expected else ""
    if len(tokens) == len(expected):
        same = [got == want for got, want in zip(tokens, expected)]
        spans, start = [], 0
        for equal, run in itertools.groupby(same):
            length = len(list(run))
            spans.append(("equal" if equal else "replace", start, start + length, start, start + length))
            start += length
    else:
        spans = difflib.SequenceMatcher(a=expected, b=tokens, autojunk=False).get_opcodes()
    shown = []
    for tag, ref_start, ref_end, start, end in spans:
        piece = html_text.escape(joiner.join(tokens[start:end]))
        if tag == "equal":
            shown.append(piece)
        elif tag == "delete":
            missing = html_text.escape(joiner.join(expected[ref_start:ref_end]), quote=True)
            shown.append(f'<mark title="missing: {missing}">‸</mark>')
        else:
            shown.append(f"<mark>{piece}</mark>")
    return joiner.join(shown)


@dataclass(frozen=True)
class Samples:
    """Sample decodes as the page shows them: any label columns, then source, reference
    and hypothesis, left-aligned and whole, the hypothesis's wrong tokens marked."""

    frame: pd.DataFrame
    """Label columns (e.g. run), then `source`, `reference`, `hypothesis`: plain text."""
    headers: tuple[str, str, str] = ("source", "reference", "hypothesis")
    """What the three text columns are called on the page."""

    def _repr_html_(self) -> str:
        shown = self.frame.copy()
        shown["hypothesis"] = pd.Series(
            [mark_differences(str(h), str(r)) for h, r in zip(shown["hypothesis"], shown["reference"])],
            index=shown.index, dtype=object,
        )
        shown = shown.rename(columns=dict(zip(("source", "reference", "hypothesis"), self.headers)))
        return html(shown, raw_html=frozenset({self.headers[2]}), classes="tdiag-table tdiag-samples")


def samples(frame: pd.DataFrame, labels: list[str], source: str = "source", reference: str = "reference",
            hypothesis: str = "hypothesis", headers: tuple[str, str, str] | None = None) -> Samples:
    """`Samples` of the frame's `labels` and its three text columns (named as in the
    frame; `headers` names them on the page, by default as in the frame)."""
    chosen = frame[[*labels, source, reference, hypothesis]].rename(
        columns={source: "source", reference: "reference", hypothesis: "hypothesis"})
    return Samples(chosen.reset_index(drop=True), headers or (source, reference, hypothesis))
