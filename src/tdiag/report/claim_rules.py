"""The rules of claims.yaml: which runs a claim reads (`Select`), what it measures on
them (`Measure`), and how a verdict follows (`Compare`, `Thresholds`, `AllOf`).

A measure gives one value per seed; a run's value is the median over its seeds, a
group's the median (or min or max) over its runs. "Steps to a threshold" may be
censored: a run that never reached it is known only to need more steps than it ran,
and a rule uses that as a bound, never as a number. Differences within a rule's
tolerance, or within one evaluation interval for steps, count as no difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tdiag.report import collect, twins

MIB = 2**20

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive at this scale"
UNTESTABLE = "not testable with this model"
"""A user's model whose factory ignores the model key the claim's runs differ in: no
scale would decide it, as the runs it compares trained identically."""
VERDICTS = (REPRODUCED, NOT_REPRODUCED, CONTRADICTED, INCONCLUSIVE, UNTESTABLE)

Scalar = Union[bool, int, float, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------ selections


class Select(_Strict):
    """Runs of the claim's study: those named in `runs`, of `grid`, whose config matches
    every `where` entry (a key of the run's resolved config, e.g. `model.init.tie`, and a
    value or a list of allowed values), not in `exclude`; then, with `lowest`/`highest`,
    only those with the lowest/highest value of that config key."""

    runs: Optional[list[str]] = None
    grid: Optional[str] = None
    where: dict[str, Union[Scalar, list[Scalar]]] = {}
    exclude: list[str] = []
    lowest: Optional[str] = None
    highest: Optional[str] = None
    aggregate: Literal["median", "min", "max"] = "median"
    """How the values of several runs become the group's one value."""
    label: Optional[str] = None
    """How the verdict's numbers name the group (default: its run names)."""

    @model_validator(mode="after")
    def _says_which(self) -> "Select":
        if self.runs is None and self.grid is None and not self.where:
            raise ValueError("a selection needs `runs`, `grid` or `where`")
        if self.lowest and self.highest:
            raise ValueError("`lowest` and `highest` exclude each other")
        return self


# -------------------------------------------------------------------- measures


class StepsTo(_Strict):
    """The first evaluation step at which `metric` on `split` reached `threshold`."""

    kind: Literal["steps_to"]
    metric: str = "exact_match"
    threshold: float = 0.99
    split: str = "valid"


class Best(_Strict):
    """The best value of `metric` over the run's evaluations on `split` (the lowest for a
    loss or perplexity, the highest otherwise)."""

    kind: Literal["best"]
    metric: str
    split: str = "valid"


class Final(_Strict):
    """A number of the run's summary, as its study table has it: `test.exact_match`,
    `valid.loss`, `peak_memory_bytes`, ..."""

    kind: Literal["final"]
    field: str


class StepTime(_Strict):
    """The median seconds of a training step (forward, backward, update)."""

    kind: Literal["step_time"]


class SideBySide(_Strict):
    """The median seconds of a training step's forward and backward with activation
    checkpointing (`checkpointed`) or without (`plain`), timed alternately in the one
    process of a run that checkpoints its blocks (train/side_by_side.py): a comparison
    that the other jobs sharing the machine cannot tilt."""

    kind: Literal["side_by_side"]
    timed: Literal["checkpointed", "plain"]


class GradCosine(_Strict):
    """The lowest cosine between the accumulated and the full-batch gradient over the
    run's gradient-quality measurements (runs with micro-batches only)."""

    kind: Literal["grad_cosine"]


class OverfitRatio(_Strict):
    """Final validation perplexity over the training perplexity of the run's last epoch
    (token-weighted mean training loss, dropout on): how much worse unseen text is."""

    kind: Literal["overfit_ratio"]


class CeilingShare(_Strict):
    """BLEU of the final model on `split` as a share of that split's BLEU ceiling (what a
    model that reproduces every target subword would score)."""

    kind: Literal["bleu_ceiling_share"]
    split: str = "train"


Measure = Annotated[
    Union[StepsTo, Best, Final, StepTime, SideBySide, GradCosine, OverfitRatio, CeilingShare],
    Field(discriminator="kind"),
]

LOWER_IS_BETTER = {"loss", "perplexity"}

SPLIT_NAMES = {"train": "training-pair", "valid": "validation", "test": "test"}
FIELD_NAMES = {"peak_memory_bytes": "peak memory", "steps": "steps trained"} | {
    f"{split}.{metric}": f"final {SPLIT_NAMES[split]} {name}"
    for split in SPLIT_NAMES
    for metric, name in {"exact_match": "exact match", "bleu": "BLEU", "chrf": "chrF", "loss": "loss",
                         "perplexity": "perplexity", "token_accuracy": "token accuracy"}.items()
}
"""A summary number's name in a verdict's words."""


# ----------------------------------------------------------------------- rules


class Compare(_Strict):
    """`first`'s measure is expected `lower` or `higher` than `second`'s, by at least
    `ratio` (times) or `difference` (units) where given. Reproduced when it is; not
    reproduced when the difference is in the expected direction but too small, or
    within `tolerance`; contradicted when it is the other way beyond `tolerance`. With
    `ties_reproduce` ("at least as good"), a difference within tolerance reproduces it.
    `equal`: reproduced within tolerance, contradicted outside it."""

    kind: Literal["compare"]
    first: Select
    second: Select
    measure: Measure
    second_measure: Optional[Measure] = None
    """`second`'s measure where it differs from `first`'s: the other of two values a run
    records of one quantity (e.g. its two side-by-side timings). Of the same kind."""
    expect: Literal["lower", "higher", "equal"]
    ratio: Optional[Annotated[float, Field(ge=1)]] = None
    difference: Optional[Annotated[float, Field(ge=0)]] = None
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    relative_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """A tolerance as a share of the larger of the two values (for times and bytes)."""
    ties_reproduce: bool = False
    second_must_reach: Optional[float] = None
    """The comparison means something only once `second` reaches this value (e.g. the
    variants the claim calls better learnt the task); below it the runs were too short."""

    @model_validator(mode="after")
    def _one_quantity(self) -> "Compare":
        if self.second_measure is not None and self.second_measure.kind != self.measure.kind:
            raise ValueError("`second_measure` must be of the same kind as `measure`: one quantity, two values")
        return self

    @property
    def measure_of_second(self):
        return self.second_measure or self.measure


class Condition(_Strict):
    measure: Measure
    at_least: Optional[float] = None
    at_most: Optional[float] = None

    @model_validator(mode="after")
    def _bounded(self) -> "Condition":
        if self.at_least is None and self.at_most is None:
            raise ValueError("a condition needs `at_least` or `at_most`")
        return self


class Thresholds(_Strict):
    """Every selected run meets every condition. With `within_steps` (the claim's step
    budget), a run that misses a condition after fewer steps than that makes the claim
    inconclusive rather than not reproduced: it was not given the claim's budget."""

    kind: Literal["thresholds"]
    select: Select
    conditions: list[Condition] = Field(min_length=1)
    within_steps: Optional[Annotated[int, Field(ge=1)]] = None


class AllOf(_Strict):
    """Several parts, each named: contradicted if one is, else inconclusive if one is,
    else reproduced if all are, else not reproduced."""

    kind: Literal["all_of"]
    parts: dict[str, Annotated[Union[Compare, Thresholds], Field(discriminator="kind")]] = Field(min_length=2)


Rule = Annotated[Union[Compare, Thresholds, AllOf], Field(discriminator="kind")]


# --------------------------------------------------------------- the study's data


@dataclass
class StudyResults:
    root: Path
    study: str
    runs: pd.DataFrame
    """One row per finished (run, seed): collect.load_runs."""
    _metrics: Optional[pd.DataFrame] = None
    own_model: Optional[str] = None
    """None: the reference's runs. A name of `own_models`: the study with that model's runs
    in place of the runs they stand beside, under those runs' names (`twins.beside_reference`)."""
    twinned: dict[str, str] = field(default_factory=dict)
    """With `own_model`: each of its runs -> the reference run it replaces."""
    design: Optional[pd.DataFrame] = None
    """The rows selections read (grid, config): the reference's. A run of `own_model` is
    selected as the run it replaces (same grid and settings; its model.arch is 'custom')."""

    @classmethod
    def load(cls, root: str | Path, study: str, own_model: Optional[str] = None) -> "StudyResults":
        reference = collect.load_runs(root, study)
        if own_model is None:
            return cls(Path(root), study, reference)
        twinned = collect.twins(Path(root), study, own_model)
        runs = twins.beside_reference(reference, collect.load_runs(root, study, own_model), twinned)
        return cls(Path(root), study, runs, own_model=own_model, twinned=twinned, design=reference)

    @property
    def metrics(self) -> pd.DataFrame:
        if self._metrics is None:
            self._metrics = collect.load_metrics(self.root, self.study)
            if self.own_model is not None:
                own = collect.load_metrics(self.root, self.study, self.own_model)
                self._metrics = twins.beside_reference(self._metrics, own, self.twinned)
        return self._metrics

    def shown(self, run: str) -> str:
        """The name a verdict's numbers give the run: the own model's run where it replaces one."""
        return next((own for own, reference in self.twinned.items() if reference == run), run)

    def unread_model_keys(self) -> list[tuple[list[str], list[str]]]:
        """With `own_model`: its runs that trained identically though their model sections
        differ, and those keys (twins.unread_model_keys); none for the reference."""
        if self.own_model is None:
            return []
        own = collect.load_runs(self.root, self.study, self.own_model)
        return twins.unread_model_keys(self.design, own, collect.load_metrics(self.root, self.study, self.own_model))

    def replaced(self) -> set[str]:
        """The reference runs whose rows are the own model's."""
        return set(self.twinned.values())

    def scale(self) -> Optional[str]:
        return None if self.runs.empty else str(self.runs["scale"].iloc[0])

    def select(self, sel: Select) -> list[str]:
        runs = (self.runs if self.design is None else self.design).drop_duplicates("run")
        if runs.empty:
            return []
        keep = pd.Series(True, index=runs.index)
        if sel.runs is not None:
            keep &= runs["run"].isin(sel.runs)
        if sel.grid is not None:
            keep &= runs["grid"].eq(sel.grid)
        for key, wanted in sel.where.items():
            column = f"config.{key}"
            if column not in runs:
                return []
            allowed = wanted if isinstance(wanted, list) else [wanted]
            keep &= runs[column].map(lambda v: any(_same(v, a) for a in allowed))
        keep &= ~runs["run"].isin(sel.exclude)
        chosen = runs[keep]
        for key, pick in ((sel.lowest, "min"), (sel.highest, "max")):
            if key and not chosen.empty:
                column = chosen[f"config.{key}"]
                chosen = chosen[column == getattr(column, pick)()]
        return list(chosen["run"])


def _same(value, wanted) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return value is wanted or value == wanted and type(value) is type(wanted)
    if isinstance(wanted, (int, float)) and isinstance(value, (int, float)):
        return math.isclose(value, wanted, rel_tol=1e-9)
    return value == wanted


# ---------------------------------------------------------------------- values


@dataclass(frozen=True)
class Value:
    x: float
    censored: bool = False
    """True: the true value is known only to be above `x` (not reached by step x)."""
    at_first_eval: bool = False
    """Steps only: reached at the run's first evaluation, so no finer than that."""
    resolution: float = 0.0
    """Steps only: the evaluation interval; differences within it are not resolved."""


@dataclass(frozen=True)
class RunValue:
    run: str
    value: Optional[Value]
    fate: str = ""
    """Why a run has no value, or its seeds' fates (diverged, not run)."""


def _median(values: list[Value]) -> Value:
    ordered = sorted(values, key=lambda v: (v.x, v.censored))
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    a, b = ordered[n // 2 - 1], ordered[n // 2]
    return Value((a.x + b.x) / 2, a.censored or b.censored, a.at_first_eval and b.at_first_eval,
                 max(a.resolution, b.resolution))


def _aggregate(values: list[Value], how: str) -> Value:
    if how == "median":
        return _median(values)
    ordered = sorted(values, key=lambda v: (v.x, v.censored))
    return ordered[0] if how == "min" else ordered[-1]


def _seed_values(measure, results: StudyResults, run: str) -> tuple[list[Value], list[str]]:
    seeds = results.runs[results.runs["run"] == run]
    values, fates = [], []
    for _, seed in seeds.iterrows():
        if seed["status"] == "unsupported":
            fates.append(f"seed {seed['seed']} not run ({seed.get('reason')})")
            continue
        if seed["status"] == "diverged":
            fates.append(f"seed {seed['seed']} diverged at step {int(seed['diverged_step'])}")
            continue
        value = _measure_seed(measure, results, run, seed)
        if value is None:
            fates.append(f"seed {seed['seed']} has no {_measure_name(measure)}")
        else:
            values.append(value)
    return values, fates


def _evals(results: StudyResults, run: str, seed: int, split: str) -> pd.DataFrame:
    metrics = results.metrics
    if metrics.empty:
        return metrics
    evals = metrics[(metrics["kind"] == "eval") & (metrics["run"] == run) & (metrics["seed"] == seed)]
    if "split" in evals:
        evals = evals[evals["split"].eq(split) | evals["split"].isna()]
    return evals.sort_values("step")


def _measure_seed(measure, results: StudyResults, run: str, seed: pd.Series) -> Optional[Value]:
    if isinstance(measure, StepsTo):
        evals = _evals(results, run, seed["seed"], measure.split)
        evals = evals[evals["step"] > 0]
        if evals.empty or measure.metric not in evals:
            return None
        interval = seed.get("config.train.eval_every")
        resolution = float(interval) if isinstance(interval, (int, float)) and not pd.isna(interval) else 0.0
        hit = evals[evals[measure.metric] >= measure.threshold]
        if hit.empty:
            return Value(float(seed["steps"]), censored=True, resolution=resolution)
        step = int(hit["step"].iloc[0])
        return Value(float(step), at_first_eval=step == int(evals["step"].iloc[0]), resolution=resolution)
    if isinstance(measure, Best):
        evals = _evals(results, run, seed["seed"], measure.split)
        if evals.empty or measure.metric not in evals or evals[measure.metric].isna().all():
            return None
        column = evals[measure.metric]
        return Value(float(column.min() if measure.metric in LOWER_IS_BETTER else column.max()))
    if isinstance(measure, Final):
        value = seed.get(measure.field)
        return None if value is None or pd.isna(value) else Value(float(value))
    if isinstance(measure, StepTime):
        train = _train(results, run, seed["seed"])
        return None if train.empty else Value(float(train["step_time"].median()))
    if isinstance(measure, SideBySide):
        value = seed.get(f"side_by_side.{measure.timed}_seconds")
        return None if value is None or pd.isna(value) else Value(float(value))
    if isinstance(measure, GradCosine):
        metrics = results.metrics
        rows = metrics[(metrics["kind"] == "grad_quality") & (metrics["run"] == run) & (metrics["seed"] == seed["seed"])]
        return None if rows.empty else Value(float(rows["grad_cosine"].min()))
    if isinstance(measure, OverfitRatio):
        train = _train(results, run, seed["seed"])
        valid = seed.get("valid.perplexity")
        if train.empty or valid is None or pd.isna(valid):
            return None
        last = train[train["epoch"] > train["epoch"].max() - 1]
        train_loss = (last["loss"] * last["tokens"]).sum() / last["tokens"].sum()
        return Value(float(valid) / math.exp(min(train_loss, 50)))
    if isinstance(measure, CeilingShare):
        from tdiag.report.translation import bleu_ceiling

        bleu = seed.get(f"{measure.split}.bleu")
        if bleu is None or pd.isna(bleu):
            return None
        return Value(float(bleu) / bleu_ceiling(results.root, seed["dataset"], measure.split))
    raise TypeError(f"no measure {measure!r}")  # the schema admits no other


def _train(results: StudyResults, run: str, seed: int) -> pd.DataFrame:
    metrics = results.metrics
    if metrics.empty:
        return metrics
    return metrics[(metrics["kind"] == "train") & (metrics["run"] == run) & (metrics["seed"] == seed)]


def run_value(measure, results: StudyResults, run: str) -> RunValue:
    values, fates = _seed_values(measure, results, run)
    return RunValue(run, _median(values) if values else None, "; ".join(fates))


# ------------------------------------------------------------------ formatting


def _measure_name(measure) -> str:
    if isinstance(measure, StepsTo):
        return f"steps to {SPLIT_NAMES.get(measure.split, measure.split)} {measure.metric.replace('_', ' ')} >= {measure.threshold:g}"
    if isinstance(measure, Best):
        return f"best {SPLIT_NAMES.get(measure.split, measure.split)} {measure.metric.replace('_', ' ')}"
    if isinstance(measure, Final):
        return FIELD_NAMES.get(measure.field, measure.field.replace("_", " "))
    if isinstance(measure, StepTime):
        return "median step time"
    if isinstance(measure, SideBySide):
        return "median forward and backward, timed side by side in one process"
    if isinstance(measure, GradCosine):
        return "lowest gradient cosine with the full batch"
    if isinstance(measure, OverfitRatio):
        return "validation / training perplexity"
    if isinstance(measure, CeilingShare):
        return f"{SPLIT_NAMES.get(measure.split, measure.split)} BLEU as a share of its ceiling"
    raise TypeError(measure)


def _key(measure) -> str:
    """The quantity's name, which sets its number format."""
    if isinstance(measure, (Best,)):
        return measure.metric
    if isinstance(measure, Final):
        return measure.field.rsplit(".", 1)[-1]
    return measure.kind


def fmt(measure, value: Optional[Value]) -> str:
    if value is None:
        return "no value"
    if isinstance(measure, StepsTo):
        return f"not reached by step {value.x:,.0f}" if value.censored else f"step {value.x:,.0f}"
    key, x = _key(measure), value.x
    if key.endswith("_bytes"):
        return f"{x / MIB:,.1f} MiB"
    if key in ("step_time", "side_by_side"):
        return f"{x * 1000:,.1f} ms"
    if key in ("perplexity", "bleu", "chrf"):
        return f"{x:,.1f}"
    if key == "grad_cosine":
        return f"{x:.7f}"
    if key in ("bleu_ceiling_share", "exact_match", "token_accuracy", "overfit_ratio"):
        return f"{x:.3f}"
    return f"{x:.4g}"


def _group_label(sel: Select, runs: list[str]) -> str:
    return sel.label or (", ".join(runs) if runs else "no run")


# --------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Judgement:
    verdict: str
    numbers: str


def _group_value(sel: Select, measure, results: StudyResults) -> tuple[list[str], Optional[Value], list[str]]:
    runs = results.select(sel)
    per_run = [run_value(measure, results, run) for run in runs]
    values = [r.value for r in per_run if r.value is not None]
    fates = [f"{results.shown(r.run)}: {r.fate}" for r in per_run if r.fate]
    return [results.shown(run) for run in runs], (_aggregate(values, sel.aggregate) if values else None), fates


def _judge_compare(rule: Compare, results: StudyResults) -> Judgement:
    runs_a, a, fates_a = _group_value(rule.first, rule.measure, results)
    runs_b, b, fates_b = _group_value(rule.second, rule.measure_of_second, results)
    name = _measure_name(rule.measure)
    numbers = (f"{name}: {_group_label(rule.first, runs_a)} {fmt(rule.measure, a)}; "
               f"{_group_label(rule.second, runs_b)} {fmt(rule.measure_of_second, b)}")
    fates = fates_a + fates_b
    if fates:
        numbers += f" ({'; '.join(fates)})"
    if a is None or b is None:
        return Judgement(INCONCLUSIVE, numbers + ": a side has no completed run to measure")
    if rule.second_must_reach is not None and (b.censored or b.x < rule.second_must_reach):
        return Judgement(INCONCLUSIVE, numbers + f": {_group_label(rule.second, runs_b)} did not reach "
                                                 f"{rule.second_must_reach:g}, so the runs were too short to tell")
    if rule.expect == "equal":
        tolerance = max(rule.tolerance, rule.relative_tolerance * max(abs(a.x), abs(b.x)))
        within = abs(a.x - b.x) <= tolerance
        return Judgement(REPRODUCED if within else CONTRADICTED,
                         numbers + f": {'within' if within else 'outside'} the tolerance of {_tolerance_text(rule, tolerance)}")
    sign = 1 if rule.expect == "lower" else -1
    advantage = sign * (b.x - a.x)  # > 0: first is better in the expected direction
    tolerance = max(rule.tolerance, rule.relative_tolerance * max(abs(a.x), abs(b.x)))
    resolution = max(a.resolution, b.resolution)  # steps: the evaluation interval
    if a.censored and b.censored:
        return Judgement(INCONCLUSIVE, numbers + ": neither reached the threshold within its run")
    if a.censored or b.censored:
        # A censored side is only bounded below: its true value is higher than shown.
        lower_first = b.censored  # the bound favours first when second is the censored one
        favours_claim = lower_first == (rule.expect == "lower")
        if not favours_claim:
            if abs(advantage) > tolerance and abs(advantage) >= resolution:
                return Judgement(CONTRADICTED, numbers)
            return Judgement(INCONCLUSIVE, numbers + ": one side had not reached the threshold when its run ended")
        if _meets(rule, a, b, advantage, tolerance):
            return Judgement(REPRODUCED, numbers + " (a lower bound for the run that had not reached it)")
        return Judgement(INCONCLUSIVE, numbers + ": a longer run could still show the claimed gap")
    if a.at_first_eval and b.at_first_eval:
        return Judgement(INCONCLUSIVE, numbers + ": both at their first evaluation, which cannot separate them")
    if abs(advantage) < resolution:
        # Both crossed the threshold between the same two evaluations.
        return Judgement(REPRODUCED if rule.ties_reproduce else INCONCLUSIVE,
                         numbers + f": within one evaluation interval ({resolution:,.0f} steps) of each other")
    if abs(advantage) <= tolerance:
        verdict = REPRODUCED if rule.ties_reproduce else NOT_REPRODUCED
        return Judgement(verdict, numbers + f": within the tolerance of {_tolerance_text(rule, tolerance)}")
    if advantage < 0:
        return Judgement(CONTRADICTED, numbers)
    if _meets(rule, a, b, advantage, tolerance):
        return Judgement(REPRODUCED, numbers)
    return Judgement(NOT_REPRODUCED, numbers + ": in the claimed direction, but by less than the claim says")


def _meets(rule: Compare, a: Value, b: Value, advantage: float, tolerance: float) -> bool:
    if advantage <= tolerance and not rule.ties_reproduce:
        return False
    if rule.difference is not None and advantage < rule.difference:
        return False
    if rule.ratio is not None:
        small, large = (a.x, b.x) if rule.expect == "lower" else (b.x, a.x)
        if small <= 0 or large / small < rule.ratio:
            return False
    return True


def _tolerance_text(rule: Compare, tolerance: float) -> str:
    if rule.relative_tolerance:
        return f"{rule.relative_tolerance:.0%}"
    return f"{tolerance:g}"


def _judge_thresholds(rule: Thresholds, results: StudyResults) -> Judgement:
    runs = results.select(rule.select)
    if not runs:
        return Judgement(INCONCLUSIVE, "no finished run matches")
    failed_in_budget, failed_short, parts = [], [], []
    for run in runs:
        steps = int(results.runs.loc[results.runs["run"] == run, "steps"].max())
        shown, missed = [], []
        for cond in rule.conditions:
            rv = run_value(cond.measure, results, run)
            shown.append(f"{_measure_name(cond.measure)} {fmt(cond.measure, rv.value)}")
            ok = rv.value is not None and not rv.value.censored and (
                (cond.at_least is None or rv.value.x >= cond.at_least)
                and (cond.at_most is None or rv.value.x <= cond.at_most))
            if not ok:
                missed.append(rv.fate or "missed")
        parts.append(f"{results.shown(run)} ({steps:,} steps): {', '.join(shown)}" + (" (missed)" if missed else ""))
        if missed:
            diverged = any("diverged" in m for m in missed)
            short = rule.within_steps is not None and steps < rule.within_steps and not diverged
            (failed_short if short else failed_in_budget).append(results.shown(run))
    numbers = "; ".join(parts)
    if failed_in_budget:
        return Judgement(NOT_REPRODUCED, numbers + f": missed by {', '.join(failed_in_budget)}")
    if failed_short:
        return Judgement(INCONCLUSIVE, numbers + f": {', '.join(failed_short)} missed it after fewer steps than the "
                                                   f"claim's {rule.within_steps:,}")
    return Judgement(REPRODUCED, numbers)


def _judge_all_of(rule: AllOf, results: StudyResults) -> Judgement:
    judged = {label: judge(part, results) for label, part in rule.parts.items()}
    numbers = " | ".join(f"{label}: {j.numbers} [{j.verdict}]" for label, j in judged.items())
    verdicts = [j.verdict for j in judged.values()]
    if CONTRADICTED in verdicts:
        return Judgement(CONTRADICTED, numbers)
    if INCONCLUSIVE in verdicts:
        return Judgement(INCONCLUSIVE, numbers)
    if all(x == REPRODUCED for x in verdicts):
        return Judgement(REPRODUCED, numbers)
    return Judgement(NOT_REPRODUCED, numbers)


def judge(rule, results: StudyResults) -> Judgement:
    if isinstance(rule, Compare):
        return _judge_compare(rule, results)
    if isinstance(rule, Thresholds):
        return _judge_thresholds(rule, results)
    return _judge_all_of(rule, results)


def selections(rule, results: StudyResults) -> list[str]:
    """Every run the rule reads, in first-seen order."""
    if isinstance(rule, Compare):
        found = results.select(rule.first) + results.select(rule.second)
    elif isinstance(rule, Thresholds):
        found = results.select(rule.select)
    else:
        found = [run for part in rule.parts.values() for run in selections(part, results)]
    return list(dict.fromkeys(found))


def _describe_select(sel: Select) -> str:
    if sel.label:
        return sel.label
    parts = []
    if sel.runs is not None:
        parts.append(", ".join(sel.runs))
    if sel.grid is not None:
        parts.append(f"grid {sel.grid}")
    parts += [f"{k}={'|'.join(map(str, w)) if isinstance(w, list) else w}" for k, w in sel.where.items()]
    if sel.lowest:
        parts.append(f"lowest {sel.lowest}")
    if sel.highest:
        parts.append(f"highest {sel.highest}")
    return " ".join(parts)


def describe(rule) -> str:
    """The rule in words, for the page."""
    if isinstance(rule, Compare):
        by = []
        if rule.ratio is not None:
            by.append(f"{rule.ratio:g}x")
        if rule.difference is not None:
            by.append(f"{rule.difference:g}")
        size = f" by at least {' and '.join(by)}" if by else ""
        relation = "equal to that" if rule.expect == "equal" else f"{rule.expect}{size} than that"
        text = f"{_measure_name(rule.measure)} of {_describe_select(rule.first)} {relation} of {_describe_select(rule.second)}"
        if rule.second_must_reach is not None:
            text += f", once {_describe_select(rule.second)} reaches {rule.second_must_reach:g}"
        tol = " (ties count)" if rule.ties_reproduce else ""
        if rule.tolerance or rule.relative_tolerance:
            within = f"{rule.relative_tolerance:.0%}" if rule.relative_tolerance else f"{rule.tolerance:g}"
            text += f"; differences within {within} are no difference{tol}"
        elif tol:
            text += tol
        return text
    if isinstance(rule, Thresholds):
        conds = []
        for c in rule.conditions:
            bounds = [f">= {c.at_least:g}" if c.at_least is not None else "", f"<= {c.at_most:g}" if c.at_most is not None else ""]
            conds.append(f"{_measure_name(c.measure)} {' and '.join(b for b in bounds if b)}")
        text = f"every run of {_describe_select(rule.select)}: {'; '.join(conds)}"
        if rule.within_steps:
            text += f"; within {rule.within_steps:,} steps"
        return text
    return "all of: " + " | ".join(f"{label}: {describe(part)}" for label, part in rule.parts.items())
