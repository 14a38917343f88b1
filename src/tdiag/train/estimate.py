"""How long each study takes at the active scale on this machine, before it runs.

For each run: its optimizer steps (seeds x `max_steps`, or `epochs` x the steps of an
epoch of its prepared dataset) and its periodic evaluations, and, from a short probe on
this machine's device (a few real training steps and one periodic evaluation of the
run's own model on its own data, as the training loop does them), their expected time.
The final full evaluation of each seed and the stage's start-up are not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tdiag import devices
from tdiag.config import Config
from tdiag.data.kinds import kind_of
from tdiag.models import build_model
from tdiag.train.loop import Watch, evaluates_after, read_meta, train_step
from tdiag.train.compiling import compiled
from tdiag.train.optim import build_optimizer

WARMUP_STEPS = 3
"""Steps before the timed ones (allocator, kernel selection, caches, and with
`train.compile` the compiling, which the estimate leaves out)."""


@dataclass(frozen=True)
class RunEstimate:
    study: str
    run: str
    seeds: int
    steps: int
    """Optimizer steps of one seed."""
    evaluations: int
    """Periodic evaluations of one seed (the untrained baseline included), over every followed split."""
    step_seconds: float
    """Median of the probe's timed steps."""
    evaluation_seconds: float

    @property
    def seconds(self) -> float:
        return self.seeds * (self.steps * self.step_seconds + self.evaluations * self.evaluation_seconds)


def estimate_run(cfg: Config, study: str, run: str, device: torch.device, root: Path, probe_steps: int) -> RunEstimate:
    rc = cfg.run(study, run)
    tc = rc.train
    kind = kind_of(cfg.datasets[rc.dataset])
    workload = kind.workload(root / kind.folder(rc.dataset), read_meta(root, rc.dataset, kind), tc, device)
    steps = tc.max_steps or tc.epochs * workload.steps_per_epoch
    evaluations = 1 + sum(evaluates_after(step, tc, workload.steps_per_epoch, steps) for step in range(1, steps + 1))
    if device.type == "cpu":
        devices.retain_freed_host_memory()  # as the run will (train/loop.py)
    torch.manual_seed(tc.seed)
    model = build_model(rc.model, *workload.vocab_sizes, workload.pad_id).to(device)
    optimizer = build_optimizer(model.parameters(), tc)
    scaler = torch.amp.GradScaler(device.type) if tc.precision == "fp16" else None
    watch = Watch(model, optimizer, device)  # a step's measurements are part of its time
    model.train()
    trained = compiled(model, tc.compile)
    times = [
        train_step(trained, optimizer, scaler, workload, tc, step, device, watch)["step_time"]
        for step in range(1, WARMUP_STEPS + probe_steps + 1)
    ][WARMUP_STEPS:]
    watch.remove()
    began = time.perf_counter()
    for split in workload.eval_splits:
        workload.evaluate(model, split, tc.eval_examples)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    evaluation_seconds = (time.perf_counter() - began) / len(workload.eval_splits)
    return RunEstimate(
        study=study,
        run=run,
        seeds=len(rc.seed_values()),
        steps=steps,
        evaluations=evaluations * len(workload.eval_splits),
        step_seconds=statistics.median(times),
        evaluation_seconds=evaluation_seconds,
    )


def estimate(cfg: Config, studies: list[str], root: Path, probe_steps: int) -> tuple[str, list[RunEstimate]]:
    """Every run of `studies`, probed on the device a training job would get here."""
    choice = devices.select_device(Path(cfg.devices.lock_dir) if cfg.devices.lock_dir else None)
    try:
        if choice.device.type == "cpu":
            torch.set_num_threads(1)  # as Snakemake runs each training job (one thread, one job per core)
        runs = [estimate_run(cfg, s, r, choice.device, root, probe_steps) for s in studies for r in cfg.run_names(s)]
    finally:
        if choice.slot is not None:
            choice.slot.release()
    return choice.description, runs


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def table(cfg: Config, description: str, runs: list[RunEstimate], jobs: int) -> str:
    """Per study: runs, optimizer steps, median step, and the expected time one job after
    another and with `jobs` jobs at once (no faster than its longest run)."""
    lines = [
        f"scale {cfg.resolved_scale}, probed on {description}; evaluation at the end of each seed not counted",
        f"{'study':<10} {'runs':>5} {'steps (all seeds)':>18} {'median step':>12} {'in sequence':>12} "
        f"{f'{jobs} at once':>12}",
    ]
    total, longest = 0.0, 0.0
    for study in dict.fromkeys(r.study for r in runs):
        mine = [r for r in runs if r.study == study]
        seconds = sum(r.seconds for r in mine)
        slowest = max(r.seconds for r in mine)
        total, longest = total + seconds, max(longest, slowest)
        lines.append(
            f"{study:<10} {len(mine):>5} {sum(r.seeds * r.steps for r in mine):>18,} "
            f"{statistics.median(r.step_seconds for r in mine) * 1e3:>9.1f} ms {hours(seconds):>12} "
            f"{hours(max(slowest, seconds / jobs)):>12}"
        )
    lines.append(f"{'all':<10} {len(runs):>5} {sum(r.seeds * r.steps for r in runs):>18,} {'':>12} "
                 f"{hours(total):>12} {hours(max(longest, total / jobs)):>12}")
    return "\n".join(lines)
