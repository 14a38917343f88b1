"""What a person watching a training job reads: log lines that say whose they are, and progress.

Every line names its study and run, and its seed once a seed trains
(`toy/copy seed 0: ...`; run-level lines `toy/copy: ...`), on stderr, in the run's log
and in each seed's log; files carry the date and time, a terminal the time.

Progress: on a terminal, a tqdm bar, with log lines written through `tqdm.write`, which
clears the bar, writes the line and redraws the bar, so neither overwrites the other.
Every `every` seconds of wall time a plain progress line (step, loss, tokens/s, ETA) goes
to the seed's log, so `tail -f` on it shows progress, and to stderr when stderr is not a
terminal (a redirected stream, a Snakemake `log:` file), where there is no bar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from contextvars import ContextVar
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("tdiag.train")

PROGRESS_EVERY_SECONDS = 30.0
"""Default wall time between two progress lines (`TDIAG_PROGRESS_SECONDS` sets another, cli.py)."""

_subject: ContextVar[str] = ContextVar("tdiag_train_subject", default="")


def subject() -> str:
    """Whose lines are being logged now: `study/run` or `study/run seed n` ('' outside a run)."""
    return _subject.get()


@contextlib.contextmanager
def about(study: str, run: str, seed: int | None = None):
    """Lines logged inside name `study/run`, and `seed n` when a seed is given."""
    token = _subject.set(f"{study}/{run}" + ("" if seed is None else f" seed {seed}"))
    try:
        yield
    finally:
        _subject.reset(token)


class _Lead(logging.Formatter):
    """`<time> <LEVEL> <subject>: <message>`; every line of a multi-line message (or of a
    traceback) gets the lead, so each line of a log says whose it is."""

    def __init__(self, datefmt: str):
        super().__init__(datefmt=datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        who = getattr(record, "subject", "")
        lead = f"{self.formatTime(record, self.datefmt)} {record.levelname} {who}{': ' if who else ''}"
        return "\n".join(lead + line for line in text.splitlines() or [""])


FILE_TIME = "%Y-%m-%d %H:%M:%S%z"
"""Local time with its UTC offset: unambiguous beside the UTC times in `summary.json`."""
TERMINAL_TIME = "%H:%M:%S"


def _stamped(handler: logging.Handler, datefmt: str) -> logging.Handler:
    """The handler, its records stamped with the subject current when they are logged."""

    def stamp(record: logging.LogRecord) -> bool:
        if not hasattr(record, "subject"):
            record.subject = subject()
        return True

    handler.addFilter(stamp)
    handler.setFormatter(_Lead(datefmt))
    return handler


class _AboveTheBar(logging.StreamHandler):
    """A terminal's handler: lines go through `tqdm.write` (above the bar, which is
    redrawn after them); progress lines are left out, the bar shows progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "progress", False) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def on_terminal() -> bool:
    """Whether stderr is a terminal: a bar there, plain progress lines otherwise."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def to_stderr():
    """Log to stderr (through tqdm on a terminal) while inside."""
    log.setLevel(logging.INFO)
    if on_terminal():
        handler = _stamped(_AboveTheBar(sys.stderr), TERMINAL_TIME)
    else:
        handler = _stamped(logging.StreamHandler(sys.stderr), FILE_TIME)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


@contextlib.contextmanager
def to_file(path: Path):
    """Also log to `path` (appended) while inside. If an exception leaves, the file's last
    line says so: a log watched with `tail -f` does not just stop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _stamped(logging.FileHandler(path), FILE_TIME)
    log.addHandler(handler)
    try:
        yield
    except BaseException as err:
        reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "stopped: %s", (reason,), None))
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def duration(seconds: float) -> str:
    """`0.4s`, `45s`, `2m10s`, `3h05m`, `2d04h`: two units at most."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
    """A seed's progress from step `start` (0, or the step it resumed at) to `total`.

    The bar (shown only on a terminal) advances every step; a progress line is logged
    once `every` seconds of wall time have passed since the last one. It reads only
    what the loop already has on the host (the step's loss, tokens and step time), so
    a step costs one clock read more.
    """

    def __init__(self, start: int, total: int, *, every: float, terminal: bool, clock=time.monotonic):
        self.total, self.every, self.clock = total, every, clock
        self.bar = tqdm(total=total, initial=start, desc=subject(), disable=not terminal, file=sys.stderr,
                        dynamic_ncols=True)
        self.restart_clock(start)

    def restart_clock(self, step: int) -> None:
        """Measure the step rate from here: after the one-off step-0 evaluation, and on a
        resumed run from its checkpoint's step rather than step 0."""
        self.first_step, self.began = step, self.clock()
        self.last = self.began
        self._since_last()

    def _since_last(self) -> None:
        self.loss_sum, self.steps, self.tokens, self.step_seconds = 0.0, 0, 0, 0.0

    def step(self, step: int, loss: float, lr: float, tokens: int, step_seconds: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens
        self.step_seconds += step_seconds
        now = self.clock()
        if now - self.last >= self.every:
            self._report(step, now)

    def _report(self, step: int, now: float) -> None:
        """Loss: the mean over the steps since the last line. tokens/s: training tokens over
        the training steps' own time (evaluations left out). ETA: the remaining steps at
        the rate measured since the (re)start, evaluations and checkpoints included."""
        rate = (step - self.first_step) / (now - self.began)
        log.info(
            "step %d/%d (%d%%) loss %.3f tokens/s %s ETA %s",
            step, self.total, 100 * step // self.total, self.loss_sum / self.steps,
            f"{self.tokens / self.step_seconds:,.0f}" if self.step_seconds > 0 else "-",
            duration((self.total - step) / rate),
            extra={"progress": True},
        )
        self.last = now
        self._since_last()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()  # also on an error: what follows starts on a line of its own
