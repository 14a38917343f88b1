"""What logging a training step through dvclive costs, beside the project's own per-step
record (one JSON line appended to `metrics.jsonl`), in one run on one machine.

Issue 11 asked for dvclive unless a reason not to was measured; this is the measurement
(train/curves.py writes DVC's curves from `metrics.jsonl` when a run finishes instead).
dvclive is not a project dependency: install it beside the project to run this.

    pip install dvclive
    python benchmarks/dvclive_cost.py [--steps 400]

Prints the median cost per step of each way of logging the same 9 values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

VALUES = ("loss", "lr", "grad_norm", "tokens", "step_time", "act_norm_first", "act_norm_last", "epoch", "wall_seconds")


def _record(step: int) -> dict:
    return {name: 1.0 / (step + i) for i, name in enumerate(VALUES)}


def per_step_jsonl(folder: Path, steps: int) -> list[float]:
    times = []
    with open(folder / "metrics.jsonl", "a") as out:
        for step in range(1, steps + 1):
            began = time.perf_counter()
            out.write(json.dumps({"step": step, **_record(step)}, sort_keys=True) + "\n")
            out.flush()
            times.append(time.perf_counter() - began)
    return times


def per_step_dvclive(folder: Path, steps: int) -> list[float]:
    from dvclive import Live

    times = []
    with Live(str(folder / "dvclive"), save_dvc_exp=False, dvcyaml=None) as live:
        for step in range(1, steps + 1):
            began = time.perf_counter()
            for name, value in _record(step).items():
                live.log_metric(f"train/{name}", value)
            live.next_step()
            times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, way in (("metrics.jsonl line", per_step_jsonl), ("dvclive log_metric x9 + next_step", per_step_dvclive)):
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            times = way(folder, args.steps)
            print(f"{name:36s} median {statistics.median(times) * 1e3:8.3f} ms per step over {args.steps} steps")


if __name__ == "__main__":
    main()
