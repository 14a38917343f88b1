"""Date pairs: every format round-trips through an independent parser, and a source names one date."""

from __future__ import annotations

import datetime
import itertools
import random
import re

import pytest

from tdiag.config import DatesTaskConfig
from tdiag.data.dates import FORMATS, formats, pairs

CFG = DatesTaskConfig(first_year=1950, last_year=2049)

# The test's own reading of each format: a strptime pattern (C locale, case-insensitive)
# applied after ordinal suffixes are checked and removed.
PATTERNS = {
    "month_day_year": "%B %d %Y",
    "month_day_comma_year": "%B %d, %Y",
    "day_month_year": "%d %B %Y",
    "weekday_month_day_year": "%A %B %d %Y",
    "weekday_comma_month_day_comma_year": "%A, %B %d, %Y",
    "wd_day_mon_year": "%a %d %b %Y",
    "mon_ordinal_year": "%b %d %Y",
    "the_ordinal_of_month_year": "the %d of %B %Y",
    "weekday_the_ordinal_of_month_year": "%A the %d of %B %Y",
    "wd_comma_ordinal_month_year": "%a, %d %B %Y",
    "dd_mon_year": "%d %b %Y",
    "mon_dd_comma_year": "%b %d, %Y",
    "dd_hyphen_mon_hyphen_year": "%d-%b-%Y",
    "dd_dot_mm_dot_year": "%d.%m.%Y",
    "year_slash_mm_slash_dd": "%Y/%m/%d",
    "dd_slash_mm_slash_yy": "%d/%m/%y",
    "day_mon_yy": "%d %b %y",
    "mon_day_apostrophe_yy": "%b %d '%y",
}
TWO_DIGIT = {name for name, pattern in PATTERNS.items() if "%y" in pattern}
SUFFIX = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}
A_WEEK = [datetime.date(2024, 1, 1) + datetime.timedelta(days=i) for i in range(7)]
WEEKDAY_WORDS = {d.strftime(f).lower() for d in A_WEEK for f in ("%A", "%a")}


def _parse(name: str, source: str, cfg: DatesTaskConfig = CFG) -> datetime.date:
    def strip(match: re.Match) -> str:
        day, suffix = int(match[1]), match[2]
        assert suffix == SUFFIX.get(day, "th"), source
        return match[1]

    plain = re.sub(r"\b(\d{1,2})(st|nd|rd|th)\b", strip, source)
    parsed = datetime.datetime.strptime(plain, PATTERNS[name]).date()
    if name in TWO_DIGIT:
        year = cfg.first_year + (parsed.year % 100 - cfg.first_year) % 100
        assert year <= cfg.last_year, source
        parsed = parsed.replace(year=year)
    return parsed


def _draw(cfg: DatesTaskConfig, seed: int, n: int) -> list[tuple[str, str]]:
    return list(itertools.islice(pairs(cfg, random.Random(seed)), n))


def _test_dates() -> list[datetime.date]:
    """Every day of a leap year, the range's ends, and a spread across the range."""
    leap = [datetime.date(2000, 1, 1) + datetime.timedelta(days=i) for i in range(366)]
    ends = [datetime.date(CFG.first_year, 1, 1), datetime.date(CFG.last_year, 12, 31)]
    rng = random.Random(0)
    spread = [datetime.date.fromordinal(rng.randint(ends[0].toordinal(), ends[1].toordinal())) for _ in range(200)]
    return leap + ends + spread


@pytest.fixture(scope="module")
def sample() -> list[tuple[str, str]]:
    return _draw(CFG, seed=0, n=20000)


def test_every_format_has_an_independent_parser():
    assert [f.name for f in FORMATS] == list(PATTERNS)
    assert {f.name for f in FORMATS if f.two_digit_year} == TWO_DIGIT
    assert len(FORMATS) >= 12


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_format_round_trips(fmt):
    for day in _test_dates():
        source = fmt.write(day)
        assert source == source.lower()
        assert _parse(fmt.name, source) == day, source


def test_weekdays_are_the_real_ones():
    with_weekday = set()
    for fmt in FORMATS:
        for day in _test_dates():
            words = [w for w in re.findall(r"[a-z]+", fmt.write(day)) if w in WEEKDAY_WORDS]
            assert words in ([], [day.strftime("%A").lower()], [day.strftime("%a").lower()]), fmt.write(day)
            with_weekday.update(words)
    assert with_weekday == WEEKDAY_WORDS  # full and abbreviated names both used, every day of the week


def test_targets_are_iso_dates_in_range(sample):
    for _, target in sample:
        day = datetime.date.fromisoformat(target)
        assert target == day.isoformat()
        assert CFG.first_year <= day.year <= CFG.last_year


def test_a_source_names_one_date_over_a_full_century():
    """Exhaustive over 100 years and every format, two-digit years included."""
    first = datetime.date(CFG.first_year, 1, 1).toordinal()
    last = datetime.date(CFG.last_year, 12, 31).toordinal()
    seen: dict[str, int] = {}
    for ordinal in range(first, last + 1):
        day = datetime.date.fromordinal(ordinal)
        for fmt in FORMATS:
            assert seen.setdefault(fmt.write(day), ordinal) == ordinal, fmt.write(day)


def test_sampled_sources_map_to_one_target_and_use_every_format(sample):
    targets: dict[str, str] = {}
    used = set()
    for source, target in sample:
        assert targets.setdefault(source, target) == target, source
        day = datetime.date.fromisoformat(target)
        used.update(f.name for f in FORMATS if f.write(day) == source)
    assert used == set(PATTERNS)


def test_same_seed_same_pairs_other_seed_other_pairs():
    assert _draw(CFG, seed=3, n=50) == _draw(CFG, seed=3, n=50)
    assert _draw(CFG, seed=3, n=50) != _draw(CFG, seed=4, n=50)


def test_two_digit_years_only_when_the_span_is_at_most_a_century():
    century = DatesTaskConfig(first_year=1900, last_year=1999)
    assert {f.name for f in formats(century)} == set(PATTERNS)
    wide = DatesTaskConfig(first_year=1900, last_year=2000)
    assert {f.name for f in formats(wide)} == set(PATTERNS) - TWO_DIGIT
    for source, target in _draw(wide, seed=0, n=3000):
        for name in TWO_DIGIT:
            with pytest.raises(ValueError):
                datetime.datetime.strptime(source, PATTERNS[name])
        assert 1900 <= datetime.date.fromisoformat(target).year <= 2000


def test_report_samples_show_dates_as_text_not_spaced_characters(tmp_path):
    """The report's sample decodes join a character-level task's tokens back into text."""
    import torch

    from tdiag import paths
    from tdiag.config import ModelConfig, TrainConfig
    from tdiag.data.synthetic import write_dataset
    from tdiag.models import build_model
    from tdiag.train.seq2seq_workload import Seq2SeqWorkload

    cfg = DatesTaskConfig(first_year=1950, last_year=2049, n_train=40, n_valid=5, n_test=5, seed=1)
    meta = write_dataset("dates", cfg, root=tmp_path)
    workload = Seq2SeqWorkload(tmp_path / paths.synthetic_dir("dates"), meta, TrainConfig(batch_size=10), torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, n_heads=2, d_ff=32, max_len=64), *workload.vocab_sizes, meta["pad_id"])
    samples = workload.samples(model, n=3)
    assert len(samples) == 3
    for sample in samples:
        assert datetime.date.fromisoformat(sample["reference"]) in _readings(sample["source"])
        assert isinstance(sample["hypothesis"], str)


def _readings(source: str) -> set[datetime.date]:
    """Every date some format reads `source` as (a numeric format may read two ways)."""
    dates = set()
    for name in PATTERNS:
        try:
            dates.add(_parse(name, source))
        except (ValueError, AssertionError):
            continue
    return dates
