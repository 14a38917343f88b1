"""Training logs a person can follow: every line says whose it is; progress on a terminal and off it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import tdiag
from tdiag.train import logs

RUN = Path("results/runs/toy/copy")
SHORT = ["--set", "studies.toy.train.max_steps=20", "--set", "studies.toy.train.eval_every=10"]

DATED = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}"
RUN_LINE = re.compile(DATED + r" (INFO|WARNING|ERROR) toy/copy: ")
SEED_LINE = re.compile(DATED + r" (INFO|WARNING|ERROR) toy/copy seed 0: ")
PROGRESS = re.compile(
    r"toy/copy seed 0: step (\d+)/20 \((\d+)%\) loss (\d+\.\d{3}) tokens/s ([\d,]+) ETA (\d+\.\ds|\d+s|\d+m\d\ds)$"
)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_off_a_terminal_progress_lines_reach_stderr_and_the_seed_log_and_every_line_names_its_run(
    tiny_project: Path, monkeypatch
):
    monkeypatch.setenv("TDIAG_PROGRESS_SECONDS", "0.05")
    done = tdiag(*SHORT, "train", "toy", "copy", cwd=tiny_project)  # stderr is a pipe
    stderr, seed_log = _lines(done.stderr), _lines((tiny_project / RUN / "seed-0" / "log").read_text())
    run_log = _lines((tiny_project / RUN / "log").read_text())

    for line in stderr + run_log:
        assert RUN_LINE.match(line) or SEED_LINE.match(line), line
    for line in seed_log:
        assert SEED_LINE.match(line), line
    assert RUN_LINE.match(run_log[0]) and RUN_LINE.match(run_log[-1]), "the run's own lines name study/run"

    progress = [m for m in map(PROGRESS.search, seed_log) if m]
    assert len(progress) >= 2, seed_log
    assert [m.group(0) for m in progress] == [m.group(0) for m in map(PROGRESS.search, stderr) if m]
    losses = {r["step"]: r["loss"] for r in map(json.loads, (tiny_project / RUN / "seed-0" / "metrics.jsonl")
                                                   .read_text().splitlines()) if r["kind"] == "train"}
    steps = [int(m.group(1)) for m in progress]
    assert steps == sorted(set(steps))
    for m, step in zip(progress, steps):
        assert int(m.group(2)) == 100 * step // 20
        assert min(losses[s] for s in range(1, step + 1)) - 1e-3 <= float(m.group(3)) <= max(losses.values()) + 1e-3
        assert int(m.group(4).replace(",", "")) > 0
    for step in (0, 10, 20):
        assert any(re.search(rf"toy/copy seed 0: eval valid at step {step}/20: loss [\d.]+, ", line)
                   for line in seed_log), step


def test_eta_comes_from_the_step_rate_since_the_restart_not_since_step_0(caplog):
    now = [100.0]
    with caplog.at_level(logging.INFO, logger="tdiag.train"), logs.about("toy", "copy", 3):
        with logs.Progress(500, 1000, every=30, terminal=False, clock=lambda: now[0]) as progress:
            for step in range(501, 511):  # resumed at step 500: 10 steps in 30 s
                now[0] += 3.0
                progress.step(step, loss=2.0 + step % 2, lr=1e-3, tokens=100, step_seconds=0.5)
    [line] = [r.getMessage() for r in caplog.records]
    # 490 steps left at 1/3 step a second; from step 0 it would read 29s.
    assert line == "step 510/1000 (51%) loss 2.500 tokens/s 200 ETA 24m30s"
    assert caplog.records[0].progress is True


@pytest.mark.parametrize("seconds, shown", [(0.42, "0.4s"), (45, "45s"), (130, "2m10s"), (11_100, "3h05m"),
                                            (187_200, "2d04h")])
def test_durations_read_at_a_glance(seconds: float, shown: str):
    assert logs.duration(seconds) == shown


def test_every_line_of_a_multi_line_message_and_its_traceback_names_the_seed(tmp_path: Path):
    path = tmp_path / "log"
    with logs.about("toy", "copy", 0), logs.to_file(path):
        try:
            raise ValueError("first\nsecond")
        except ValueError:
            logs.log.exception("two lines\nof message")
    lines = _lines(path.read_text())
    assert len(lines) > 4 and all(SEED_LINE.match(line) for line in lines), lines


def test_a_seed_that_stops_on_an_error_says_so_as_the_last_line_of_its_log(tiny_project: Path):
    (tiny_project / RUN / "seed-0" / "checkpoint.pt").mkdir(parents=True)
    done = tdiag("train", "toy", "copy", cwd=tiny_project, check=False)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("tdiag: error: ")
    for log_file, line in ((RUN / "seed-0" / "log", SEED_LINE), (RUN / "log", RUN_LINE)):
        last = _lines((tiny_project / log_file).read_text())[-1]
        assert line.match(last) and "ERROR" in last and "stopped: UserError: " in last and "is a folder" in last


def test_a_progress_interval_that_is_not_a_positive_number_is_one_user_error(tiny_project: Path, monkeypatch):
    monkeypatch.setenv("TDIAG_PROGRESS_SECONDS", "soon")
    done = tdiag("train", "toy", "copy", cwd=tiny_project, check=False)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "tdiag: error: TDIAG_PROGRESS_SECONDS='soon' is not a positive number of seconds; "
        "set e.g. TDIAG_PROGRESS_SECONDS=30"
    ]


def _screen_lines(raw: str) -> list[str]:
    """The lines a terminal shows for `raw`: a carriage return moves back to column 0,
    later text overwrites earlier text, a newline starts the next line."""
    shown, line, col = [], [], 0
    for ch in raw:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            shown.append("".join(line).rstrip())
            line, col = [], 0
        else:
            line[col:col + 1] = [ch]
            col += 1
    shown.append("".join(line).rstrip())
    return [s for s in shown if s]


def test_on_a_terminal_log_lines_are_written_above_the_bar_and_progress_lines_only_to_the_seed_log(
    tiny_project: Path
):
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TDIAG_PROGRESS_SECONDS": "0.05"}
    job = subprocess.Popen([sys.executable, "-m", "tdiag", *SHORT, "train", "toy", "copy"], cwd=tiny_project,
                           env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the job closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert job.wait(timeout=120) == 0
    raw = b"".join(chunks).decode()

    assert "it/s" in raw and "%|" in raw, "no bar was drawn"
    screen = _screen_lines(raw)
    for line in screen:
        bar, logged = "%|" in line, bool(re.search(r"(INFO|WARNING) toy/copy", line))
        assert bar != logged, f"bar and log line run into each other: {line!r}"
    log_lines = [line for line in screen if re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) toy/copy", line)]
    assert any("eval valid at step 10/20" in line for line in log_lines), screen
    assert any(line.startswith("toy/copy seed 0:") and "%|" in line for line in screen), "the bar's last state"
    assert not any("tokens/s" in line for line in screen), "the bar shows progress on a terminal"
    assert any(PROGRESS.search(line) for line in _lines((tiny_project / RUN / "seed-0" / "log").read_text()))
