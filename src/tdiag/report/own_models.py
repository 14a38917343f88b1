"""The section of a study page that sets each of the user's own models (params.yaml
`own_models`) beside the reference: the claims judged both ways, each pair of runs'
held-out numbers, time and memory, and their loss curves on one figure."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # drawn off-screen: the notebook's own plotting backend is left as it is

from tdiag.report import claims, collect, model_checks, twins
from tdiag.report.claims import VERDICT_COLOURS, Verdict

HEADLINE_METRICS = (
    ("test.exact_match", "exact match", "{:.3f}"),
    ("test.bleu", "BLEU", "{:.1f}"),
    ("test.perplexity", "perplexity", "{:,.1f}"),
    ("test.loss", "loss", "{:.3f}"),
)
"""Held-out numbers a pair is compared on, those the study's runs have, at most `SHOWN`."""
SHOWN = 3
MAX_PANELS = 12
"""Pairs drawn on the curves figure; the table lists every pair."""
MIB = 2**20

HOW_TO = ("No model of your own is configured for this study. Name one in params.yaml under "
          "<code>own_models</code> and every run of the model it replaces trains beside it here "
          "(README, \"Your model beside the reference\").")


def section_html(root: Path | str, study: str) -> str:
    """Every own model of the study, one after the other (or how to configure one)."""
    names = collect.own_model_names(Path(root), study)
    if not names:
        return f"<p>{HOW_TO}</p>"
    return "".join(_model_html(Path(root), study, name) for name in names)


def _model_html(root: Path, study: str, name: str) -> str:
    own = collect.load_runs(root, study, name)
    reference = collect.load_runs(root, study)
    first = own.iloc[0]
    factory = first.get("config.model.factory", "?")
    replaced_arch = reference.loc[reference["run"].isin(own["reference_run"]), "config.model.arch"]
    arch = replaced_arch.iloc[0] if not replaced_arch.empty else "?"
    pairs = _pairs(reference, own)
    own_records = collect.load_metrics(root, study, name)
    return (
        f"<h3>{html.escape(name)}: <code>{html.escape(str(factory))}</code> in place of the reference's "
        f"{html.escape(str(arch))}</h3>"
        f"<p>{len(pairs)} of its runs stand beside the reference's: same data, seeds and training settings; "
        "the factory received each reference run's model section.</p>"
        + _checks_html(root, study, list(own["run"].unique()))
        + _unread_keys_html(reference, own, own_records)
        + _claims_html(root, study, name)
        + _pairs_html(pairs)
        + _curves_html(root, study, name, pairs, own_records)
    )


def _checks_html(root: Path, study: str, runs: list[str]) -> str:
    """The model checks of the own model's checked runs (one per distinct model section):
    a failure first, since the numbers below are not a working model's until it is fixed."""
    records = [r for r in model_checks.read(root, study) if r["run"] in runs]
    if not records:
        return ""
    failed = {c["name"]: c["message"] for r in records for c in r["checks"] if not c["passed"]}
    if not failed:
        checked = f"its {len(records)} checked runs" if len(records) > 1 else "its checked run"
        return f"<p>Its model checks all pass on {checked} (table above).</p>"
    items = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(message)}</li>" for name, message in failed.items())
    return (
        "<div style='background:#f4c7c3;padding:0.4em'><b>Its model checks fail</b> (table above), so the numbers "
        f"below are not those of a working model until that is fixed:<ul>{items}</ul></div>"
    )


def _unread_keys_html(reference: pd.DataFrame, own: pd.DataFrame, own_records: pd.DataFrame) -> str:
    groups = twins.unread_model_keys(reference, own, own_records)
    if not groups:
        return ""
    items = "".join(
        f"<li>{html.escape(', '.join(runs))}: same losses at every step, though the model sections differ in "
        f"<code>{html.escape(', '.join(keys))}</code></li>" for runs, keys in groups)
    return (
        "<p style='background:#fbe3c8;padding:0.4em'><b>Keys your factory does not read.</b> These runs trained "
        "identically although the study varies the model between them, so a comparison through those keys says "
        f"nothing about your model (read them from <code>config</code> in the factory, or leave those grids out "
        f"with <code>own_models.&lt;name&gt;.studies</code>):</p><ul>{items}</ul>"
    )


def _claims_html(root: Path, study: str, name: str) -> str:
    beside = claims.read_verdicts(root, study, name)
    if not beside:
        return f"<p>No claim of this study reads a run that {html.escape(name)} replaces.</p>"
    reference = {v.claim_id: v for v in claims.read_verdicts(root, study)}
    rows = []
    for v in beside:
        ref = reference.get(v.claim_id)
        rows.append(
            f"<tr><td><b>{html.escape(v.claim)}</b><br><small>runs read: {html.escape(', '.join(v.reads))}</small></td>"
            + (_verdict_cells(ref) if ref else "<td></td><td></td>")
            + _verdict_cells(v) + "</tr>"
        )
    return (
        "<style>table.beside { table-layout: fixed; width: 100%; } table.beside td, table.beside th "
        "{ text-align: left; vertical-align: top; overflow-wrap: anywhere; }</style>"
        f"<p><b>Claims with {html.escape(name)}:</b> {html.escape(claims.counts_text(beside))}; the reference: "
        f"{html.escape(claims.counts_text([reference[v.claim_id] for v in beside if v.claim_id in reference]))} "
        "on the same claims.</p>"
        "<table class='beside'><thead><tr><th style='width:28%'>claim</th><th style='width:24%'>reference: numbers</th>"
        f"<th style='width:12%'>verdict</th><th style='width:24%'>{html.escape(name)}: numbers</th>"
        "<th style='width:12%'>verdict</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _verdict_cells(v: Verdict) -> str:
    return (f"<td>{html.escape(v.numbers)}</td>"
            f"<td style='background:{VERDICT_COLOURS[v.verdict]}'><b>{html.escape(v.verdict)}</b></td>")


def _pairs(reference: pd.DataFrame, own: pd.DataFrame) -> pd.DataFrame:
    """One row per own run: its reference run and both runs' numbers (means over seeds)."""
    numeric = [c for c, _, _ in HEADLINE_METRICS if c in own] + ["wall_seconds", "peak_memory_bytes"]
    numeric = [c for c in numeric if c in own and c in reference]

    def per_run(frame: pd.DataFrame) -> pd.DataFrame:
        statuses = frame.groupby("run")["status"].agg(lambda s: ", ".join(sorted(set(s))))
        return frame.groupby("run")[numeric].mean(numeric_only=True).assign(status=statuses)

    ref, mine = per_run(reference), per_run(own)
    twins = own.drop_duplicates("run").set_index("run")["reference_run"]
    out = mine.join(ref, on=twins.reindex(mine.index), lsuffix="_own", rsuffix="_reference")
    out.insert(0, "reference_run", twins.reindex(mine.index))
    return out.reset_index().sort_values("reference_run")


def _fmt(value, template: str) -> str:
    return "—" if pd.isna(value) else template.format(value)


def _pairs_html(pairs: pd.DataFrame) -> str:
    shown = [(c, label, t) for c, label, t in HEADLINE_METRICS if f"{c}_own" in pairs][:SHOWN]
    shown += [("wall_seconds", "wall time (s)", "{:,.0f}")]
    if "peak_memory_bytes_own" in pairs:
        shown.append(("peak_memory_bytes", "peak memory (MiB)", "{:,.1f}"))
    head = "".join(f"<th>{html.escape(label)}<br><small>reference / own</small></th>" for _, label, _ in shown)
    rows = []
    for _, row in pairs.iterrows():
        cells = []
        for column, _, template in shown:
            scale = MIB if column == "peak_memory_bytes" else 1
            ref, own = row.get(f"{column}_reference"), row.get(f"{column}_own")
            cells.append(f"<td>{_fmt(ref / scale if pd.notna(ref) else ref, template)} / "
                         f"{_fmt(own / scale if pd.notna(own) else own, template)}</td>")
        status = "" if row["status_own"] == "completed" else f" <small>({html.escape(str(row['status_own']))})</small>"
        rows.append(f"<tr><td>{html.escape(str(row['reference_run']))}<br><small>{html.escape(str(row['run']))}"
                    f"</small>{status}</td>{''.join(cells)}</tr>")
    return (
        "<p>Each pair's held-out numbers (test split, mean over seeds), wall time and peak memory "
        "(the run's own peak, as the runs table says), the reference's first:</p>"
        "<table class='beside'><thead><tr><th>run (reference, then yours)</th>" + head + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )


def _curves_html(root: Path, study: str, name: str, pairs: pd.DataFrame, own: pd.DataFrame) -> str:
    """Training and validation loss against step, a panel per pair: the reference grey, the own model red."""
    reference = collect.load_metrics(root, study)
    if reference.empty or own.empty:
        return ""
    drawn = pairs.head(MAX_PANELS)
    columns = min(3, len(drawn))
    rows = -(-len(drawn) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (_, pair) in zip(axes.flat, drawn.iterrows()):
        for frame, run, colour, who in ((reference, pair["reference_run"], "dimgrey", "reference"),
                                        (own, pair["run"], "tab:red", name)):
            records = frame[(frame["run"] == run) & (frame["seed"] == frame.loc[frame["run"] == run, "seed"].min())]
            train = records[records["kind"] == "train"]
            valid = records[(records["kind"] == "eval") & (records["split"] == "valid")]
            if not train.empty:
                smooth = train["loss"].rolling(max(1, len(train) // 50), min_periods=1).mean()
                ax.plot(train["step"], smooth, "-", color=colour, alpha=0.45, linewidth=1, label=f"{who}: training")
            if not valid.empty:
                ax.plot(valid["step"], valid["loss"], "o-", color=colour, markersize=3, label=f"{who}: validation")
        ax.set_title(str(pair["reference_run"]), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    note = f" (the first {MAX_PANELS} of {len(pairs)} pairs)" if len(pairs) > MAX_PANELS else ""
    return (
        f"<p>Loss against step, first seed{note}: the reference grey, {html.escape(name)} red; "
        "training loss smoothed (thin), validation loss at each evaluation (dots).</p>"
        f"<img style='width:100%' alt='loss curves, reference and {html.escape(name)}' "
        f"src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
    )
