"""Each job's seconds in Snakemake runs of the pipeline, side by side (issue 15, item 4).

    python benchmarks/smoke_job_times.py BEFORE.log AFTER.log [...]

Reads Snakemake's own output (what `snakemake --cores all > run.log 2>&1` writes, or
`.snakemake/log/*.snakemake.log`): a job runs from its "rule"/"localrule" block's
timestamp to its "Finished jobid" line's, to the second. Prints, per kind of job (the
rule name up to its study: `train_lm`, `check_toy`, ...), the jobs' count and summed
seconds in each log, and for the jobs every log ran, the median per-job difference
against the first log. A fixed cost per process (an import, say) shows as about the
same difference on every job; the VM's drift scales with each job's length instead.
"""

from __future__ import annotations

import argparse
import re
import statistics
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")
KINDS = re.compile(r"^(train_(?:toy|lm|lab|wmt14)|check_(?:toy|lm|lab|wmt14)|[a-z]+)")


def job_seconds(log: Path) -> dict[str, float]:
    """Seconds of each finished job, by rule name (one job per rule in this pipeline)."""
    started: dict[str, datetime] = {}
    seconds: dict[str, float] = {}
    stamp = rule = None
    for line in log.read_text(errors="replace").splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := START.match(line):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule is not None:
            started[m.group(1)] = stamp
            rule = None
        elif (m := FINISHED.match(line)) and m.group(1) in started:
            seconds[m.group(2)] = (stamp - started[m.group(1)]).total_seconds()
    return seconds


def kind(rule: str) -> str:
    return KINDS.match(rule).group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    args = parser.parse_args()
    runs = [job_seconds(log) for log in args.logs]
    kinds = sorted({kind(rule) for run in runs for rule in run})
    names = [log.stem for log in args.logs]
    print(f"{'jobs':<14}" + "".join(f"{name[:22]:>24}" for name in names) + "   median per-job difference")
    for k in kinds + ["every job"]:
        cells, diffs = [], []
        for run in runs:
            jobs = [s for rule, s in run.items() if k == "every job" or kind(rule) == k]
            cells.append(f"{len(jobs):>4} jobs {sum(jobs):>8.0f} s")
        common = [rule for rule in runs[0] if (k == "every job" or kind(rule) == k) and all(rule in r for r in runs)]
        for run in runs[1:]:
            diffs.append(statistics.median(run[r] - runs[0][r] for r in common) if common else float("nan"))
        print(f"{k:<14}" + "".join(f"{c:>24}" for c in cells) + "   " + ", ".join(f"{d:+.1f} s" for d in diffs))


if __name__ == "__main__":
    main()
