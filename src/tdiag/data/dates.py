"""Date normalisation pairs: a date in one of many human formats -> ISO `YYYY-MM-DD`.

Every source must name exactly one date, so the formats are chosen not to clash:
all-numeric formats put the day before the month (`dd/mm/yy`, `dd.mm.yyyy`; never
`mm/dd`) unless the four-digit year leads (`yyyy/mm/dd`), and a four-digit year is
never confused with a day or month. A two-digit
year names a unique year only when the dataset spans at most 100 years (each
`yy` then occurs once in first_year..last_year), so those formats are used only then.

Month and weekday names come from the tables below, not the locale, so the data are
the same on every machine.
"""

from __future__ import annotations

import datetime
import random
from typing import Callable, Iterator, NamedTuple

from tdiag.config import DatesTaskConfig

MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")  # date.weekday() order
TWO_DIGIT_YEAR_SPAN = 100


class DateFormat(NamedTuple):
    """A named way to write a date; `two_digit_year` formats need a span of at most 100 years."""

    name: str
    write: Callable[[datetime.date], str]
    two_digit_year: bool = False


def _month(d: datetime.date) -> str:
    return MONTHS[d.month - 1]


def _mon(d: datetime.date) -> str:
    return _month(d)[:3]


def _weekday(d: datetime.date) -> str:
    return WEEKDAYS[d.weekday()]


def _wd(d: datetime.date) -> str:
    return _weekday(d)[:3]


def _ordinal(d: datetime.date) -> str:
    """1st 2nd 3rd 4th ... 11th 12th 13th ... 21st 22nd 23rd ... 31st."""
    n = d.day
    suffix = "th" if 11 <= n <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


FORMATS: tuple[DateFormat, ...] = (
    DateFormat("month_day_year", lambda d: f"{_month(d)} {d.day} {d.year}"),
    DateFormat("month_day_comma_year", lambda d: f"{_month(d)} {d.day}, {d.year}"),
    DateFormat("day_month_year", lambda d: f"{d.day} {_month(d)} {d.year}"),
    DateFormat("weekday_month_day_year", lambda d: f"{_weekday(d)} {_month(d)} {d.day} {d.year}"),
    DateFormat("weekday_comma_month_day_comma_year", lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}"),
    DateFormat("wd_day_mon_year", lambda d: f"{_wd(d)} {d.day} {_mon(d)} {d.year}"),
    DateFormat("mon_ordinal_year", lambda d: f"{_mon(d)} {_ordinal(d)} {d.year}"),
    DateFormat("the_ordinal_of_month_year", lambda d: f"the {_ordinal(d)} of {_month(d)} {d.year}"),
    DateFormat(
        "weekday_the_ordinal_of_month_year", lambda d: f"{_weekday(d)} the {_ordinal(d)} of {_month(d)} {d.year}"
    ),
    DateFormat("wd_comma_ordinal_month_year", lambda d: f"{_wd(d)}, {_ordinal(d)} {_month(d)} {d.year}"),
    DateFormat("dd_mon_year", lambda d: f"{d.day:02d} {_mon(d)} {d.year}"),
    DateFormat("mon_dd_comma_year", lambda d: f"{_mon(d)} {d.day:02d}, {d.year}"),
    DateFormat("dd_hyphen_mon_hyphen_year", lambda d: f"{d.day:02d}-{_mon(d)}-{d.year}"),
    DateFormat("dd_dot_mm_dot_year", lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}"),
    DateFormat("year_slash_mm_slash_dd", lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}"),
    DateFormat("dd_slash_mm_slash_yy", lambda d: f"{d.day:02d}/{d.month:02d}/{d.year % 100:02d}", True),
    DateFormat("day_mon_yy", lambda d: f"{d.day} {_mon(d)} {d.year % 100:02d}", True),
    DateFormat("mon_day_apostrophe_yy", lambda d: f"{_mon(d)} {d.day} '{d.year % 100:02d}", True),
)


def formats(cfg: DatesTaskConfig) -> tuple[DateFormat, ...]:
    """The formats whose strings name a unique date within the config's year range."""
    span = cfg.last_year - cfg.first_year + 1
    return tuple(f for f in FORMATS if span <= TWO_DIGIT_YEAR_SPAN or not f.two_digit_year)


def pairs(cfg: DatesTaskConfig, rng: random.Random) -> Iterator[tuple[str, str]]:
    """Endless (human, ISO) pairs: dates uniform over the range, formats uniform over `formats(cfg)`."""
    first = datetime.date(cfg.first_year, 1, 1).toordinal()
    last = datetime.date(cfg.last_year, 12, 31).toordinal()
    usable = formats(cfg)
    while True:
        day = datetime.date.fromordinal(rng.randint(first, last))
        yield rng.choice(usable).write(day), day.isoformat()
