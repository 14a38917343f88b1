"""The one training loop: every model and study trains through `train_run`.

A run trains one configuration for each of its seeds, each in `seed-<n>/`. Per
optimizer step it records loss, lr, global and per-block grad norms, the final
LayerNorm's norms, activation norms, step time, tokens, the bytes saved for backward
and the seed's peak memory so far (train/memory.py) to `metrics.jsonl`; it evaluates
every `eval_every` steps (`evaluates_after`), checkpoints every `checkpoint_every` steps and at the end,
resumes from the checkpoint by default, and stops a seed whose loss is NaN/inf with
`status: diverged` (a finished stage, so the rest of the study goes on). With
`train.stop_when`, a seed whose validation evaluations meet it stops there, checkpointed,
and finishes as a completed seed (`stopped_early` in its summary). With
micro-batches, each evaluation also compares the accumulated gradient with the
full-batch one (train/grad_quality.py). Summaries are written last: the seed's, then
the run's, just after the run's headline numbers and curves (train/curves.py). What it
logs, and its progress lines, are described in train/logs.py. Under torchrun it is one
process of a data-parallel run (train/distributed.py): only rank 0 writes, and the
activation norms, step time and memory it records are its own process's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import torch

from tdiag import atomic, devices, paths, provenance
from tdiag.config import Config, ConfigError, RunConfig, StopWhen
from tdiag.data.kinds import DatasetKind, kind_of
from tdiag.errors import UserError
from tdiag.stage import TRAINING, code_digest
from tdiag.models import build_model
from tdiag.train import (checkpoint, curves, distributed, grad_quality, logs, memory_estimate, side_by_side,
                         unsupported)
from tdiag.train.compiling import compiled
from tdiag.train.checkpoint import TrainState
from tdiag.train.distributed import Group
from tdiag.train.logs import log
from tdiag.train.memory import MemoryMeter
from tdiag.train.metrics import ActivationNorms, GradientNorms, as_floats
from tdiag.train.optim import build_optimizer, build_scheduler
from tdiag.train.workload import Workload


@dataclass(frozen=True)
class SeedFiles:
    """The files of one seed of one run."""

    root: Path
    study: str
    run: str
    seed: int

    def _path(self, kind: str) -> Path:
        return self.root / getattr(paths, f"seed_{kind}")(self.study, self.run, self.seed)

    config = property(lambda self: self._path("config"))
    metrics = property(lambda self: self._path("metrics"))
    checkpoint = property(lambda self: self._path("checkpoint"))
    summary = property(lambda self: self._path("summary"))
    log = property(lambda self: self._path("log"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def evaluates_after(step: int, tc, steps_per_epoch: int, total_steps: int) -> bool:
    """Whether the loop evaluates after optimizer step `step` (step 0, the untrained
    model, always is). A run sized in steps (`max_steps`): every `eval_every` steps, or
    at each epoch's end when it is null. A run sized in `epochs`: at each epoch's end,
    and every `eval_every` steps counted from the epoch's start, so every epoch is
    evaluated at the same points and always at its end (the epoch table of a language
    model reads them). Either way, after the last step."""
    if step == total_steps:
        return True
    if tc.epochs is None:
        return step % (tc.eval_every or steps_per_epoch) == 0
    into_epoch = (step - 1) % steps_per_epoch + 1
    return into_epoch == steps_per_epoch or (tc.eval_every is not None and into_epoch % tc.eval_every == 0)


def evaluation_cadence(tc, steps_per_epoch: int) -> str:
    """`evaluates_after` in words, for the log."""
    if tc.eval_every is None:
        return f"at the end of every epoch ({steps_per_epoch} steps)"
    if tc.epochs is None:
        return f"every {tc.eval_every} steps"
    return f"every {tc.eval_every} steps of each epoch and at its end"


def _finite(record: dict) -> dict:
    """JSON has no NaN/inf: non-finite numbers are recorded as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _autocast(device: torch.device, precision: str):
    dtype = devices.autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def read_meta(root: Path, dataset: str, kind: DatasetKind) -> dict:
    path = root / kind.meta_file(dataset)
    if not path.exists():
        raise UserError(f"dataset '{dataset}' not found at {path}; run its data stages first (`tdiag stages`)")
    return json.loads(path.read_text())


def train_run(cfg: Config, study: str, run: str, *, root: Path = Path("."), restart: bool = False,
              progress_every: float = logs.PROGRESS_EVERY_SECONDS) -> dict:
    """Train every seed of one run (each resuming from its checkpoint); returns the run summary.

    Every check (dataset present and readable, device, precision, memory estimate) comes
    before any file of the run is touched: a refused command leaves a finished run as it was.
    A precision the device cannot do is refused too, or with `train.unsupported_precision:
    record` the run is written as finished and untrained (train/unsupported.py).
    A progress line is logged every `progress_every` seconds of wall time (train/logs.py).
    """
    with logs.about(study, run), logs.to_stderr():  # the run's log file opens once the checks have passed
        return _train_run(cfg, study, run, root, restart, progress_every)


def _train_run(cfg: Config, study: str, run: str, root: Path, restart: bool, progress_every: float) -> dict:
    rc = cfg.run(study, run)
    kind = kind_of(cfg.datasets[rc.dataset])  # its files and its workload (batches, loss, evaluation)
    meta = read_meta(root, rc.dataset, kind)
    group = distributed.from_env()
    if group.active:  # one of train.devices processes started by torchrun, on the device it was given
        distributed.check_world(group, rc.train.devices, f"studies.{study}.runs.{run}.train.devices")
        device = distributed.device_of(group)
        choice = devices.DeviceChoice(device, None, f"{device}, rank {group.rank} of {group.world}")
        distributed.join(group, device)
        if not group.writer:
            log.setLevel(logging.WARNING)  # rank 0 tells the run's story
    else:
        choice = devices.select_device(Path(cfg.devices.lock_dir) if cfg.devices.lock_dir else None,
                                       on_wait=log.info, jobs_per_gpu=cfg.devices.jobs_per_gpu)
    if choice.device.type == "cpu":
        # Freed step-sized tensors (a language model's (B, L, V) logits, every activation of
        # a batch) would go back to the OS and be page-faulted in again each step.
        devices.retain_freed_host_memory()
    try:
        reason = devices.supports_precision(choice.device, rc.train.precision)
        if reason and rc.train.unsupported_precision == "stop":
            raise ConfigError(
                f"studies.{study}.runs.{run}.train.precision: {reason} (or set train.unsupported_precision: "
                "record to record the run as unsupported)"
            )
        loading = time.perf_counter()
        # Every process builds each step's batch whole, in micro_batches x devices parts (train/distributed.py).
        sharded = rc.train.model_copy(update={"micro_batches": rc.train.micro_batches * group.world})
        workload = kind.workload(root / kind.folder(rc.dataset), meta, sharded, choice.device)
        loaded = time.perf_counter() - loading
        if not reason:
            memory_estimate.check(f"studies.{study}.runs.{run}", rc.model, rc.train, workload.vocab_sizes,
                                  choice.device)

        run_summary = root / paths.run_summary(study, run)
        if group.writer:
            run_summary.unlink(missing_ok=True)  # its presence must always mean "finished"
            atomic.remove_temporaries(run_summary)
        if reason:  # never trained in another precision
            with _log_file(group, root / paths.run_log(study, run)):
                log.warning("not trained on %s: %s; recorded as %s (train.unsupported_precision: record)",
                            choice.description, reason, unsupported.STATUS)
            summary = unsupported.run_summary(study, run, rc, reason, choice.description, cfg.resolved_scale)
            return _finish(root, summary, [], workload.best[0]) if group.writer else summary
        with _log_file(group, root / paths.run_log(study, run)):
            log.info("run on %s, dataset %s (loaded in %s), seeds %s", choice.description, rc.dataset,
                     logs.duration(loaded), rc.seed_values())
            seeds = []
            for seed in rc.seed_values():
                files = SeedFiles(root, study, run, seed)
                with logs.about(study, run, seed), _log_file(group, files.log):
                    seeds.append(_train_seed(cfg, rc, files, meta, workload, choice, restart, progress_every,
                                             group))
            summary = _run_summary(study, run, rc, seeds)
            log.info("run %s: seeds %s, %s of training", summary["status"], summary["seeds"],
                     logs.duration(summary["wall_seconds"]))
    finally:
        if choice.slot is not None:
            choice.slot.release()
        distributed.leave(group)
    if not group.writer:
        return summary
    return _finish(root, summary, summary["seeds"], workload.best[0])


def _log_file(group: Group, path: Path):
    """The run's or seed's log file, written by rank 0 alone."""
    return logs.to_file(path) if group.writer else contextlib.nullcontext()


def _finish(root: Path, summary: dict, trained_seeds: list[int], metric: str) -> dict:
    """Write the run's curves (from `trained_seeds`), headline numbers, then its summary, last."""
    study, run = summary["study"], summary["run"]
    curves.write_run_curves(root, study, run, trained_seeds)
    curves.write_run_metrics(root, study, run, summary, metric)
    atomic.write_json(root / paths.run_summary(study, run), summary)
    return summary


def _seed_config(rc: RunConfig, seed: int) -> RunConfig:
    return rc.model_copy(update={"train": rc.train.model_copy(update={"seed": seed})})


def _train_seed(cfg, rc: RunConfig, files: SeedFiles, meta, workload: Workload, choice, restart,
                progress_every: float, group: Group = distributed.SINGLE) -> dict:
    rc = _seed_config(rc, files.seed)
    tc, device = rc.train, choice.device
    digest = rc.digest(extra=[meta["config"], code_digest(TRAINING)])
    if not restart and files.summary.exists():
        done = json.loads(files.summary.read_text())
        if done.get("config_digest") == digest:
            log.info("already finished (%s): kept", done["status"])
            return done
    for path in (files.config, files.metrics, files.checkpoint, files.summary):
        if path.is_dir():  # planted or mistaken: no file can be written or read there
            raise UserError(f"{path} is a folder where a file belongs; move it away and rerun")
    if group.writer:
        files.summary.unlink(missing_ok=True)
        for path in (files.config, files.metrics, files.checkpoint, files.summary):
            atomic.remove_temporaries(path)  # left by a kill during a write

    total_steps = tc.max_steps or tc.epochs * workload.steps_per_epoch

    def fresh():
        torch.manual_seed(tc.seed)
        model = build_model(rc.model, *workload.vocab_sizes, workload.pad_id).to(device)
        optimizer = build_optimizer(model.parameters(), tc)
        scheduler = build_scheduler(optimizer, tc, rc.model.d_model, total_steps)
        workload.reset()
        scaler = torch.amp.GradScaler(device.type) if tc.precision == "fp16" else None
        return model, optimizer, scheduler, scaler

    model, optimizer, scheduler, scaler = fresh()
    state = TrainState()
    saved = None if restart else _matching_checkpoint(files.checkpoint, digest)
    if saved is not None:
        try:
            state = checkpoint.restore(saved, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                       workload=workload, rank=group.rank, world=group.world)
            log.info("resuming from checkpoint at step %d (of %d)", state.step, total_steps)
        except checkpoint.Unreadable as err:
            log.warning("checkpoint %s could not be restored: %s; starting from step 0", files.checkpoint, err)
            model, optimizer, scheduler, scaler = fresh()  # restoring may have stopped part way
            saved = None
    group.barrier()  # every rank has read the checkpoint before rank 0 replaces anything
    if group.writer:
        if saved is None:
            files.checkpoint.unlink(missing_ok=True)
        atomic.write_json(files.config, {**_provenance(cfg, rc, files, choice, model, workload),
                                         "config_digest": digest})
        atomic.write_jsonl(files.metrics, state.records)  # drops records past the checkpoint
    trained = compiled(distributed.wrap(model, group, device), tc.compile)  # evaluations run `model`
    started = time.perf_counter() - state.elapsed_seconds
    watch = Watch(model, optimizer, device, [r for r in state.records if r["kind"] == "train"])

    def evaluate(split: str, decode_limit):
        with watch.memory.paused():
            return workload.evaluate(model, split, decode_limit)

    latest: dict[str, tuple[int, dict]] = {}  # split -> (step, result) of its last whole-split evaluation

    def evaluate_logged(split: str, step: int) -> dict:
        began = time.perf_counter()
        result = evaluate(split, tc.eval_examples)
        if workload.scores_whole_split(split, tc.eval_examples):
            latest[split] = (step, result)
        log.info("eval %s at step %d/%d: %s (%s)", split, step, total_steps,
                 ", ".join(f"{k} {result[k]:.4g}" for k in workload.log_keys),
                 logs.duration(time.perf_counter() - began))
        return result

    status, diverged_step = "completed", None
    # Resumed from the checkpoint written where the seed stopped early: it stays stopped.
    stopped_early = tc.stop_when is not None and stop_reached(tc.stop_when, state.records)
    log.info("steps %d to %d on %s, an epoch is %d steps; evaluating %s, checkpointing every %d%s",
             state.step + 1, total_steps, choice.description, workload.steps_per_epoch,
             evaluation_cadence(tc, workload.steps_per_epoch), tc.checkpoint_every,
             "; first evaluating the untrained model" if state.step == 0 else "")
    if tc.compile != "off":
        log.info("the training forward is compiled (torch.compile, mode %s): the first steps' times include "
                 "compiling it", tc.compile)
    progress = logs.Progress(state.step, total_steps, every=progress_every,
                             terminal=group.writer and logs.on_terminal())
    with progress, (open(files.metrics, "a") if group.writer else contextlib.nullcontext()) as metrics_file:

        def emit(record: dict) -> None:
            record = _finite(record)
            state.records.append(record)
            if metrics_file is not None:
                metrics_file.write(json.dumps(record, sort_keys=True) + "\n")
                metrics_file.flush()

        def measure_grad_quality(step: int) -> None:
            """With micro-batches: the accumulated gradient against the full-batch one, on
            the next step's batch (train/grad_quality.py)."""
            if tc.micro_batches == 1 or group.active:  # a single process's measure
                return
            with watch.memory.paused():  # it holds the whole batch's activations: not a training step's
                result = grad_quality.measure(model, workload, step + 1, tc, device, scaler)
            emit({"kind": "grad_quality", "step": step, "micro_batches": tc.micro_batches, **result})
            log.info("gradient of %d micro-batches vs the whole batch after step %d: cosine %.9f, "
                     "relative difference %.3g", tc.micro_batches, step, result["grad_cosine"], result["grad_rel_diff"])

        # Held-out curves are on valid; a workload may also follow other splits (e.g. train).
        eval_splits = workload.eval_splits
        if state.step == 0:  # the untrained baseline anchors every curve
            for split in eval_splits:
                emit({"kind": "eval", "split": split, "step": 0, "epoch": 0.0, **evaluate_logged(split, 0)})
            measure_grad_quality(0)
            progress.restart_clock(0)  # a one-off: the step rate is measured without it
        model.train()
        while state.step < total_steps and not stopped_early:
            step = state.step + 1
            record = train_step(trained, optimizer, scaler, workload, tc, step, device, watch, group)
            record.update(epoch=step / workload.steps_per_epoch, wall_seconds=time.perf_counter() - started)
            if not math.isfinite(record["loss"]):
                emit({**record, "diverged": True})
                status, diverged_step = "diverged", step
                log.warning("loss is not finite at step %d/%d: seed marked diverged", step, total_steps)
                break
            scheduler.step()
            state.step = step
            emit(record)
            progress.step(step, record["loss"], record["lr"], record["tokens"], record["step_time"])
            if evaluates_after(step, tc, workload.steps_per_epoch, total_steps):
                for split in eval_splits:
                    result = evaluate_logged(split, step)
                    emit({"kind": "eval", "split": split, "step": step, "epoch": step / workload.steps_per_epoch,
                          "wall_seconds": time.perf_counter() - started, **result})
                measure_grad_quality(step)
                if tc.stop_when is not None and stop_reached(tc.stop_when, state.records):
                    stopped_early = True
                    log.info("stopping early at step %d/%d: %s (train.stop_when)", step, total_steps,
                             tc.stop_when.describe())
            if step % tc.checkpoint_every == 0 or step == total_steps or stopped_early:
                state.elapsed_seconds = time.perf_counter() - started
                ranks = group.gather(checkpoint.rank_state(workload.state_dict()))
                if group.writer:
                    checkpoint.save(
                        files.checkpoint, digest=digest, state=state, workload=workload.state_dict(),
                        model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ranks=ranks,
                    )
    watch.remove()
    memory = watch.memory.summary()  # training's, before the final evaluation

    finished = status == "completed"
    timed = {}
    if finished and not group.active and side_by_side.applies(rc.model.arch, rc.model.checkpointing):
        timed = side_by_side.checkpointing_times(model, workload, tc.seed, tc.label_smoothing, device,
                                                 lambda: _autocast(device, tc.precision))
        log.info("forward and backward, timed side by side over %d pairs: %.1f ms checkpointed, %.1f ms without",
                 timed["pairs"], 1000 * timed["checkpointed_seconds"], 1000 * timed["plain_seconds"])
    final_splits = ("test", "valid", "train") if "train" in eval_splits else ("test", "valid")
    final = {}
    if finished:
        # A split evaluated whole at this step already has its final scores: the model is unchanged.
        final = {split: result for split, (step, result) in latest.items() if step == state.step}
        log.info("final evaluation on every example of %s%s", ", ".join(s for s in final_splits if s not in final),
                 f" ({', '.join(final)}: the evaluation of step {state.step})" if final else "")
        final.update({split: evaluate(split, None) for split in final_splits if split not in final})
    evals = [r for r in state.records if r.get("kind") == "eval" and r.get("split") == "valid"]
    summary = {
        "run": files.run,
        "seed": files.seed,
        "status": status,
        "diverged_step": diverged_step,
        "steps": state.step,
        "max_steps": total_steps,
        "stopped_early": stopped_early,
        "steps_per_epoch": workload.steps_per_epoch,
        "test": final.get("test"),
        "valid": final.get("valid"),
        "train": final.get("train"),
        "samples": workload.samples(model) if finished else [],
        "best_valid": _best(evals, *workload.best),
        "wall_seconds": time.perf_counter() - started,
        "resumed_from": state.resumed_from,
        **memory,
        **({"side_by_side": timed} if timed else {}),
        "device": str(device),
        "finished_at": _now(),
        "config_digest": digest,
    }
    if group.writer:
        atomic.write_json(files.summary, summary)
    log.info(
        "%s after %d steps in %s%s", status, state.step, logs.duration(summary["wall_seconds"]),
        ": test " + ", ".join(f"{k} {summary['test'][k]:.4g}" for k in workload.log_keys) if finished else "",
    )
    return summary


def _matching_checkpoint(path: Path, digest: str) -> dict | None:
    """The checkpoint at `path` if it is readable and for configuration `digest`, else None (logged).

    It is read with the weights-only loader (tensors and plain values: reading runs no
    code), and its digest is compared before anything else in it is used.
    """
    try:
        saved = checkpoint.read(path)
    except checkpoint.Unreadable as err:
        log.warning("checkpoint %s could not be read: %s; starting from step 0", path, err)
        return None
    if saved is not None and saved["config_digest"] != digest:
        log.info("checkpoint %s is for a different configuration: starting from step 0", path)
        return None
    return saved


def stop_reached(stop: StopWhen, records: list[dict]) -> bool:
    """Whether the validation evaluations since training began (the untrained model's at
    step 0 never counts) have met `stop` at every one for its `for_steps` steps: the
    latest meets it, and so does every one back to an evaluation `for_steps` or more
    steps earlier. Read from the run's records, so a seed resumed from a checkpoint
    counts the evaluations before it."""
    evals = [r for r in records if r.get("kind") == "eval" and r.get("split") == "valid" and r["step"] > 0]
    held_since = None
    for r in reversed(evals):
        value = r.get(stop.metric)  # None: not finite (records hold no NaN), which meets nothing
        if value is None or not stop.met_by(value):
            break
        held_since = r["step"]
    return held_since is not None and evals[-1]["step"] - held_since >= stop.for_steps


def _best(evals: list[dict], metric: str, direction: str) -> dict | None:
    """The best evaluation by the workload's headline metric (max or min), and its step."""
    scored = [r for r in evals if r.get(metric) is not None]
    if not scored:
        return None
    pick = max if direction == "max" else min
    best = pick(scored, key=lambda r: r[metric])
    return {"metric": metric, "value": best[metric], "step": best["step"]}


class Watch:
    """What a training step measures besides its loss: one seed's memory (train/memory.py),
    and its activation and gradient norms (train/metrics.py). `earlier`: the train records
    kept from before a resume."""

    def __init__(self, model, optimizer, device: torch.device, earlier: Iterable[dict] = ()):
        self.memory = MemoryMeter(model, optimizer, device, earlier)
        self.activations = ActivationNorms(model)
        self.gradients = GradientNorms(model)

    @contextlib.contextmanager
    def forward(self, micro):
        """Around the training forward of micro-batch `micro` (not its backward, which may recompute)."""
        with self.memory.micro_batch(micro), self.activations.recording():
            yield

    def remove(self) -> None:
        self.activations.remove()


def train_step(model, optimizer, scaler, workload: Workload, tc, step: int, device, watch: Watch,
               group: Group = distributed.SINGLE) -> dict:
    """One optimizer step over `batch_size` examples split into `micro_batches` chunks
    (on each of the `group`'s processes, its share of them: train/distributed.py).

    Nothing here waits for the device but the one transfer of the step's measures (loss,
    norms) at its end, which also times it: the loss, the gradient norms and the
    activation norms stay on the device until then. A step whose loss is not finite is
    applied like any other: the loop stops the seed as diverged right after it, and
    saves nothing of it. (fp16's grad scaler reads its own inf check on the host.)
    """
    began = time.perf_counter()  # the device is idle: the last step's transfer waited for it
    batch = workload.train_batch(step, tc.seed)
    own = group.own_micro_batches(batch.micro, tc.micro_batches)
    loss_total = torch.zeros((), device=device)
    for i, micro in enumerate(own):
        # DDP reduces gradients on the last micro-batch's backward only.
        accumulating = model.no_sync() if group.active and i < len(own) - 1 else contextlib.nullcontext()
        with accumulating:
            with _autocast(device, tc.precision), watch.forward(micro):
                loss = workload.loss(model, micro, batch.n_tokens, tc.label_smoothing)
            if group.rank * tc.micro_batches + i in batch.fillers:
                loss = loss * 0.0  # a part with no example: it runs, and adds nothing
            scaled = scaler.scale(loss) if scaler else loss
            (scaled * group.world if group.active else scaled).backward()  # summed over processes, not averaged
        loss_total += loss.detach()
    group.sum_(loss_total)
    if scaler:
        scaler.unscale_(optimizer)
    gradient_norms = watch.gradients.measure()  # before clipping
    if tc.clip_grad_norm:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), tc.clip_grad_norm, gradient_norms["grad_norm"])
    lr = optimizer.param_groups[0]["lr"]
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    measures = as_floats({"loss": loss_total, **gradient_norms, **watch.activations.pop()})  # the one transfer
    memory = watch.memory.end_step()
    return {
        "kind": "train",
        "step": step,
        "lr": lr,
        **measures,
        "step_time": time.perf_counter() - began,
        **batch.stats,
        **memory,
    }


def _run_summary(study: str, run: str, rc: RunConfig, seeds: list[dict]) -> dict:
    """The run over its seeds: status counts and the mean of each held-out metric."""
    completed = [s for s in seeds if s["status"] == "completed"]
    statuses = {s["status"] for s in seeds}
    mean = {}
    for split in ("test", "valid"):
        keys = [k for k, v in (completed[0][split] if completed else {}).items() if isinstance(v, (int, float))]
        mean[split] = {k: statistics.fmean(s[split][k] for s in completed) for k in keys} if completed else None
    return {
        "study": study,
        "run": run,
        "status": statuses.pop() if len(statuses) == 1 else "partly diverged",
        "seeds": [s["seed"] for s in seeds],
        "diverged_seeds": [s["seed"] for s in seeds if s["status"] == "diverged"],
        "grid": rc.grid,
        "variant": rc.variant,
        **rc.twin_fields(),
        "dataset": rc.dataset,
        "test": mean["test"],
        "valid": mean["valid"],
        "wall_seconds": sum(s["wall_seconds"] for s in seeds),
        "peak_memory_bytes": max(s["peak_memory_bytes"] for s in seeds),
        "memory_measure": ", ".join(sorted({s["memory_measure"] for s in seeds})),
        "per_seed": seeds,
        "finished_at": _now(),
    }


def _provenance(cfg: Config, rc: RunConfig, files: SeedFiles, choice, model, workload: Workload) -> dict:
    return {
        "study": files.study,
        "run": files.run,
        "scale": cfg.resolved_scale,
        "config": rc.model_dump(mode="json"),
        "seed": rc.train.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": workload.tokens_per_step,
        "device": choice.description,
        "hardware": devices.hardware_description(),
        "git": provenance.git_commit(),
        "packages": provenance.package_versions(),
        "python": provenance.python_version(),
        "started_at": _now(),
    }
