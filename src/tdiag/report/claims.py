"""The references' claims as data: `claims.yaml` says, per claim, its wording, its source,
the runs it reads and the rule that decides it; this module loads and checks that file
and judges every claim of a study from the study's finished runs.

A verdict is one of `VERDICTS`. It is computed from the runs each time a page renders
(`render.render_study` writes the study's verdicts beside its table; the page and the
index read them), never written by hand. A claim whose `decided_at` scale is above the
runs' scale is judged "inconclusive at this scale", with what the rule alone would say.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tdiag import atomic, paths
from tdiag.config import Config
from tdiag.config.errors import format_error
from tdiag.errors import UserError
from tdiag.report import collect
from tdiag.report.claim_rules import (
    CONTRADICTED, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, UNTESTABLE, VERDICTS, Judgement, Rule, StudyResults,
    describe, judge, selections,
)

CLAIMS_FILE = paths.CLAIMS

SCALE_ORDER = {"smoke": 0, "full": 1}


class ClaimsError(UserError):
    """claims.yaml cannot be read: missing, not YAML, or a bad key or value."""


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    study: str
    claim: str
    """The claim in the reference's words (or as close as a rule can check)."""
    source: str
    """Where the reference says it: a paper and section, or the reference study's table."""
    rule: Rule
    decided_at: Literal["smoke", "full"] = "smoke"
    """The smallest scale whose budget can decide the claim; below it the verdict is
    'inconclusive at this scale' (and the page says what the rule alone would say)."""


class ClaimsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    claims: dict[str, Claim] = Field(min_length=1)

    @field_validator("claims")
    @classmethod
    def _named_well(cls, claims: dict) -> dict:
        for name in claims:
            paths.check_name(name)
        return claims


def load(path: Path = CLAIMS_FILE) -> ClaimsFile:
    """The claims file, validated: a bad key or value is one line naming its path."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ClaimsError(f"{path}: no such file; the report pages judge the claims it lists") from None
    except yaml.YAMLError as err:
        raise ClaimsError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    try:
        return ClaimsFile.model_validate(raw)
    except ValidationError as err:
        raise ClaimsError(f"{path}: " + format_error(err, "", ClaimsFile)) from None


def unconfigured(claims: ClaimsFile, cfg: Config) -> list[str]:
    """The claims of studies this configuration does not have: judged on no page (a
    configuration may leave a study out). Run and grid names are not checked either: a
    claim reading runs the configuration lacks is inconclusive. The committed file is
    checked against the committed params.yaml by the tests."""
    return [name for name, claim in claims.claims.items() if claim.study not in cfg.studies]


@dataclass(frozen=True)
class Verdict:
    claim_id: str
    claim: str
    source: str
    reads: list[str]
    rule: str
    verdict: str
    numbers: str


def judge_study(claims: ClaimsFile, root: Path, study: str, own_model: Optional[str] = None) -> list[Verdict]:
    """Every claim of `study` judged from its finished runs under `root`; with `own_model`,
    from the study with that model's runs in place of those they stand beside
    (`StudyResults.load`), and only the claims that read at least one of them."""
    mine = {name: claim for name, claim in claims.claims.items() if claim.study == study}
    if not mine:
        return []
    results = StudyResults.load(root, study, own_model)
    scale = results.scale()
    unread = results.unread_model_keys()
    out = []
    for name, claim in mine.items():
        read = set(selections(claim.rule, results))
        if own_model is not None and not read & results.replaced():
            continue
        judged: Judgement = judge(claim.rule, results)
        verdict, numbers = judged.verdict, judged.numbers
        for runs, keys in unread:
            same = [run for run in runs if results.twinned[run] in read]
            if len(same) > 1:  # the rule compares runs that differ only in what the factory ignores
                numbers = (f"{numbers} (the rule alone: {verdict}; but {', '.join(same)} trained identically: "
                           f"the factory does not read {', '.join(keys)})")
                verdict = UNTESTABLE
                break
        if scale is not None and SCALE_ORDER[scale] < SCALE_ORDER[claim.decided_at]:
            numbers = f"{numbers} (the rule alone: {verdict}; this claim needs the {claim.decided_at} scale's budget)"
            verdict = INCONCLUSIVE
        own_name = {reference: own for own, reference in results.twinned.items()}
        reads = [own_name.get(run, run) for run in selections(claim.rule, results)]
        out.append(Verdict(name, claim.claim, claim.source, reads, describe(claim.rule), verdict, numbers))
    return out


def write_verdicts(claims: ClaimsFile, root: Path, study: str) -> Path:
    """The study's verdicts, the reference's and those with each of `own_models` in its place."""
    verdicts = judge_study(claims, root, study)
    beside = {name: judge_study(claims, root, study, name) for name in collect.own_model_names(root, study)}
    out = root / paths.study_verdicts(study)
    atomic.write_json(out, {
        "study": study,
        "verdicts": [asdict(v) for v in verdicts],
        "own_models": {name: [asdict(v) for v in judged] for name, judged in beside.items()},
    })
    return out


def read_verdicts(root: str | Path, study: str, own_model: Optional[str] = None) -> list[Verdict]:
    """The reference's verdicts, or (`own_model`) those judged with that model in its place."""
    data = json.loads((Path(root) / paths.study_verdicts(study)).read_text())
    judged = data["verdicts"] if own_model is None else data.get("own_models", {}).get(own_model, [])
    return [Verdict(**v) for v in judged]


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    """How many claims got each verdict, in `VERDICTS` order (zeros included)."""
    return {v: sum(1 for x in verdicts if x.verdict == v) for v in VERDICTS}


VERDICT_COLOURS = {
    REPRODUCED: "#d8f0d8", NOT_REPRODUCED: "#fbe3c8", CONTRADICTED: "#f6cccc", INCONCLUSIVE: "#e6e6e6",
    UNTESTABLE: "#dde6f0",
}


def counts_text(verdicts: list[Verdict]) -> str:
    """'3 reproduced, 1 contradicted, ...' (verdicts with no claim left out), or 'no claims'."""
    parts = [f"{n} {v}" for v, n in counts(verdicts).items() if n]
    return ", ".join(parts) if parts else "no claims"


def verdict_table_html(verdicts: list[Verdict]) -> str:
    """The table a study page opens with: claim, source, our numbers, verdict; the runs
    read and the deciding rule under each claim."""
    if not verdicts:
        return "<p>No claim of claims.yaml concerns this study.</p>"
    rows = []
    for v in verdicts:
        colour = VERDICT_COLOURS[v.verdict]
        reads = ", ".join(v.reads) if v.reads else "no finished run matches"
        rows.append(
            "<tr>"
            f"<td><b>{html.escape(v.claim)}</b><br><small>runs read: {html.escape(reads)}<br>"
            f"rule: {html.escape(v.rule)}</small></td>"
            f"<td>{html.escape(v.source)}</td>"
            f"<td>{html.escape(v.numbers)}</td>"
            f"<td style='background:{colour}'><b>{html.escape(v.verdict)}</b></td>"
            "</tr>"
        )
    return (
        "<style>table.verdicts { table-layout: fixed; width: 100%; } table.verdicts td, table.verdicts th "
        "{ text-align: left; vertical-align: top; overflow-wrap: anywhere; }</style>"
        f"<p><b>Verdicts:</b> {html.escape(counts_text(verdicts))} (claims.yaml, judged from this page's runs "
        "when it was rendered).</p>"
        "<table class='verdicts'><thead><tr><th style='width:38%'>claim</th><th style='width:17%'>source</th>"
        "<th style='width:33%'>our numbers</th><th style='width:12%'>verdict</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )
