"""The report's index page: links to every study page and what produced them."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tdiag import devices, paths, provenance
from tdiag.config import Config
from tdiag.report import claims
from tdiag.report.headline import headline

STUDY_QUESTIONS = {
    "toy": "Does the from-scratch Transformer learn simple tasks, and which init choices, positions and warmup matter?",
    "wmt14": "Is the whole translation path right (tokenisation, BPE, model, decoding, BLEU)? Overfit 1,024 WMT14 en-fr pairs.",
    "lm": "LSTM vs GPT language models on WikiText-2, by depth and optimizer: perplexity, wall-clock, memory.",
    "lab": "What each training choice costs and buys: learning rate x batch, optimizers, activation checkpointing, "
           "micro-batching, precision, attention implementation vs context, pre/post-LN x warmup.",
}

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { border: 1px solid #ccc; padding: .3rem .6rem; }
th { background: #f4f4f4; text-align: left; } code { background: #f4f4f4; padding: 0 .2rem; }
"""


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {sec:02d}s" if hours else f"{minutes}m {sec:02d}s"


def _verdict_cell(verdicts: list) -> str:
    """'2 reproduced, 1 contradicted' with each verdict in its page colour."""
    parts = [f"<span style='background:{claims.VERDICT_COLOURS[v]};padding:0 .3rem;white-space:nowrap'>{n} {html.escape(v)}</span>"
             for v, n in claims.counts(verdicts).items() if n]
    return ", ".join(parts) if parts else "no claims"


def index_html(cfg: Config, root: Path = Path(".")) -> str:
    rows, total_seconds, starts, finishes, all_verdicts = [], 0.0, [], [], []
    for study in cfg.studies:
        runs = pd.read_csv(root / paths.study_table(study))
        total_seconds += float(runs["wall_seconds"].sum())
        starts += list(runs["started_at"])
        finishes += list(runs["finished_at"])
        diverged = int((runs["status"] == "diverged").sum())
        trained = int((runs["status"] != "unsupported").sum())  # a precision the device could not do
        link = paths.report_page(study).name
        question = STUDY_QUESTIONS.get(study, "")
        verdicts = claims.read_verdicts(root, study)
        rows.append(
            f"<tr><td><a href='{link}'>{html.escape(study)}</a></td><td>{html.escape(question)}</td>"
            f"<td>{html.escape(headline(study, runs))}</td><td>{_verdict_cell(verdicts)}</td>"
            f"<td>{runs['run'].nunique()}</td><td>{trained}</td><td>{diverged}</td></tr>"
        )
        all_verdicts += verdicts
    hardware = devices.hardware_description()
    gpus = ", ".join(hardware.get("gpus") or []) or "none"
    git = provenance.git_commit(root)
    commit = (git["commit"] or "not a git checkout") + (" (uncommitted changes)" if git["dirty"] else "")
    span = ""
    if starts and finishes:
        elapsed = datetime.fromisoformat(max(finishes)) - datetime.fromisoformat(min(starts))
        span = f" (first run start to last run end: {_duration(elapsed.total_seconds())})"
    facts = [
        ("Scale", f"{cfg.resolved_scale} (params.yaml: {cfg.scale})"),
        ("Hardware", f"CPU {hardware.get('cpu_model')} ({hardware.get('logical_cores')} cores); GPUs: {gpus}"),
        ("Python", provenance.python_version()),
        ("torch", provenance.package_versions()["torch"]),
        ("Git commit", commit),
        ("Total training wall time", _duration(total_seconds) + span),
        ("Built", datetime.now(timezone.utc).isoformat(timespec="seconds")),
    ]
    fact_rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>transformer-diagnostics report</title>
<style>{STYLE}</style></head>
<body>
<h1>transformer-diagnostics report</h1>
<table>{fact_rows}</table>
<h2>Studies</h2>
<p>The references' claims (claims.yaml), judged from these runs: {_verdict_cell(all_verdicts)}.
Each page opens with its claims, the numbers that decide them and the rule.</p>
<table><tr><th>study</th><th>question</th><th>headline result</th><th>claims</th><th>runs</th><th>seeds trained</th>
<th>seeds diverged</th></tr>
{''.join(rows)}</table>
</body></html>
"""
