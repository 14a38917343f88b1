"""The model checks section of a study page: each checked model's checks (tdiag.checks),
pass or fail with the number measured, and the line naming the bug of each failure."""

from __future__ import annotations

import html
import json
from pathlib import Path
from tdiag import paths


def read(root: Path | str, study: str) -> list[dict]:
    """Every check file of the study (`tdiag check`: one run per distinct model), by run name."""
    folder = Path(root) / paths.run_checks(study, "any").parent
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def _cell(check: dict) -> str:
    measured = check["measured"]
    number = f"{measured:.3g}" if isinstance(measured, (int, float)) else str(measured)
    if check["passed"]:
        return f"<td title='{html.escape(check['message'])}'>pass<br><small>{number}</small></td>"
    return f"<td style='background:#f4c7c3' title='{html.escape(check['message'])}'><b>FAIL</b><br><small>{number}</small></td>"


def section_html(records: list[dict]) -> str:
    """A table, one row per checked model and one column per check, then each failure's line."""
    if not records:
        return "<p>No model of this study was checked (`tdiag check`).</p>"
    names = list(dict.fromkeys(c["name"] for r in records for c in r["checks"]))
    rows, failures = [], []
    for record in records:
        by_name = {c["name"]: c for c in record["checks"]}
        cells = "".join(_cell(by_name[n]) if n in by_name else "<td>—</td>" for n in names)
        rows.append(f"<tr><td><b>{html.escape(record['run'])}</b></td>{cells}</tr>")
        failures += [f"<li><b>{html.escape(record['run'])}</b>, {html.escape(c['name'])}: {html.escape(c['message'])}</li>"
                     for c in record["checks"] if not c["passed"]]
    passed = sum(r["passed"] for r in records)
    head = "".join(f"<th>{html.escape(n.replace('_', ' '))}</th>" for n in names)
    return (
        # Fixed layout at the page's width: eleven check columns fit without a scroll bar.
        "<style>table.checks { table-layout: fixed; width: 100%; font-size: 0.85em; } "
        "table.checks td, table.checks th { text-align: left; vertical-align: top; overflow-wrap: anywhere; "
        "padding: 0.2em; }</style>"
        f"<p><b>{passed} of {len(records)} checked models pass every check.</b></p>"
        f"<table class='checks'><thead><tr><th>model (first run)</th>{head}</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
        + (f"<p>What each failure points to:</p><ul>{''.join(failures)}</ul>" if failures else "")
    )
