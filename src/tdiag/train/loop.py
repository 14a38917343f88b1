"""The one training loop: every model and study trains through `train_run`.

Per optimizer step it records loss, lr, global grad norm, activation norms, step
time, tokens and peak memory to `metrics.jsonl`; it evaluates every `eval_every`
steps, checkpoints every `checkpoint_every` steps and at the end, resumes from the
checkpoint by default, and stops a run whose loss is NaN/inf with `status: diverged`
(a finished stage, so the rest of the study goes on). `summary.json` is written last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tdiag import atomic, devices, paths, provenance
from tdiag.config import Config, ConfigError, RunConfig
from tdiag.data.batching import PairedData, batch_indices, load_pairs
from tdiag.models import build_model
from tdiag.train import checkpoint
from tdiag.train.checkpoint import TrainState
from tdiag.train.evaluate import evaluate_seq2seq
from tdiag.train.metrics import ActivationNorms
from tdiag.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("tdiag.train")


@dataclass(frozen=True)
class RunPaths:
    root: Path
    study: str
    run: str

    def __getattr__(self, name: str) -> Path:
        return self.root / getattr(paths, f"run_{name}")(self.study, self.run)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _setup_logging(log_file: Path) -> logging.Handler:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in log.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        log.addHandler(stream)
    log.setLevel(logging.INFO)
    return handler


def _autocast(device: torch.device, precision: str):
    dtype = devices.autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _read_meta(root: Path, dataset: str) -> dict:
    path = root / paths.synthetic_meta(dataset)
    if not path.exists():
        raise ConfigError(f"dataset '{dataset}' not found at {path}; run `tdiag data synth {dataset}` first")
    return json.loads(path.read_text())


def train_run(cfg: Config, study: str, run: str, *, root: Path = Path("."), restart: bool = False) -> dict:
    """Train one run to completion (resuming if a matching checkpoint exists); returns the summary."""
    rc = cfg.run(study, run)
    files = RunPaths(root, study, run)
    meta = _read_meta(root, rc.dataset)
    handler = _setup_logging(files.log)
    choice = None
    try:
        choice = devices.select_device(
            Path(cfg.devices.lock_dir) if cfg.devices.lock_dir else None, on_wait=log.info
        )
        reason = devices.supports_precision(choice.device, rc.train.precision)
        if reason:
            raise ConfigError(f"studies.{study}.runs.{run}.train.precision: {reason}")
        return _train(cfg, rc, study, run, files, meta, choice, restart)
    finally:
        log.removeHandler(handler)
        handler.close()
        if choice is not None and choice.slot is not None:
            choice.slot.release()


def _train(cfg, rc: RunConfig, study, run, files: RunPaths, meta, choice, restart) -> dict:
    device = choice.device
    tc = rc.train
    digest = run_digest(rc, meta)
    files.summary.unlink(missing_ok=True)  # its presence must always mean "finished"
    log.info("run %s/%s on %s", study, run, choice.description)

    data_dir = files.root / paths.synthetic_dir(rc.dataset)
    pad_id, go_id, stop_id = meta["pad_id"], meta["go_id"], meta["stop_id"]
    train_data = load_pairs(data_dir / "train.jsonl", pad_id)
    valid_data = load_pairs(data_dir / "valid.jsonl", pad_id)
    test_data = load_pairs(data_dir / "test.jsonl", pad_id)

    torch.manual_seed(tc.seed)
    model = build_model(rc.model, meta["src_vocab_size"], meta["tgt_vocab_size"], pad_id).to(device)
    optimizer = build_optimizer(model.parameters(), tc)
    scheduler = build_scheduler(optimizer, tc)
    scaler = torch.amp.GradScaler(device.type) if tc.precision == "fp16" else None

    state = TrainState()
    saved = None if restart else checkpoint.load(files.checkpoint)
    if saved is not None and saved["config_digest"] != digest:
        log.info("checkpoint %s is for a different configuration: starting from step 0", files.checkpoint)
        saved = None
    if saved is not None:
        state = checkpoint.restore(saved, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        log.info("resuming from checkpoint at step %d (of %d)", state.step, tc.max_steps)
    else:
        files.checkpoint.unlink(missing_ok=True)

    atomic.write_json(files.config, {**_provenance(cfg, rc, study, run, choice, model), "config_digest": digest})
    atomic.write_jsonl(files.metrics, state.records)  # drops records past the checkpoint
    started = time.perf_counter() - state.elapsed_seconds
    norms = ActivationNorms(model)
    evaluate = lambda data, n: evaluate_seq2seq(  # noqa: E731
        model, data, device=device, pad_id=pad_id, go_id=go_id, stop_id=stop_id, decode_examples=n
    )

    status, diverged_step = "completed", None
    bar = tqdm(total=tc.max_steps, initial=state.step, desc=f"{study}/{run}", disable=None, file=sys.stderr)
    with open(files.metrics, "a") as metrics_file:

        def emit(record: dict) -> None:
            record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
            state.records.append(record)
            metrics_file.write(json.dumps(record, sort_keys=True) + "\n")
            metrics_file.flush()

        if state.step == 0:  # the untrained baseline anchors every curve
            emit({"kind": "eval", "split": "valid", "step": 0, **evaluate(valid_data, tc.eval_examples)})
        model.train()
        while state.step < tc.max_steps:
            step = state.step + 1
            record = _train_step(model, optimizer, scaler, train_data, tc, step, device, pad_id)
            record.update(norms.pop())
            if not math.isfinite(record["loss"]):
                emit({**record, "diverged": True})
                status, diverged_step = "diverged", step
                log.warning("loss is not finite at step %d: run marked diverged", step)
                break
            scheduler.step()
            state.step = step
            emit(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", refresh=False)
            if step % tc.eval_every == 0 or step == tc.max_steps:
                result = evaluate(valid_data, tc.eval_examples)
                emit({"kind": "eval", "split": "valid", "step": step, **result})
                log.info(
                    "step %d: valid loss %.4f, token accuracy %.4f, exact match %.4f",
                    step, result["loss"], result["token_accuracy"], result["exact_match"],
                )
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                state.elapsed_seconds = time.perf_counter() - started
                checkpoint.save(
                    files.checkpoint, digest=digest, state=state,
                    model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                )
    bar.close()
    norms.remove()

    test = evaluate(test_data, None) if status == "completed" else None
    valid = evaluate(valid_data, None) if status == "completed" else None
    evals = [r for r in state.records if r.get("kind") == "eval"]
    summary = {
        "study": study,
        "run": run,
        "status": status,
        "diverged_step": diverged_step,
        "steps": state.step,
        "max_steps": tc.max_steps,
        "test": test,
        "valid": valid,
        "best_valid_exact_match": max((r["exact_match"] for r in evals), default=None),
        "first_step_exact_match_1": next((r["step"] for r in evals if r["exact_match"] >= 1.0), None),
        "wall_seconds": time.perf_counter() - started,
        "resumed_from": state.resumed_from,
        "peak_memory_bytes": devices.peak_memory_bytes(device),
        "device": str(device),
        "finished_at": _now(),
        "config_digest": digest,
    }
    atomic.write_json(files.summary, summary)
    log.info(
        "%s/%s %s after %d steps%s", study, run, status, state.step,
        f": test exact match {test['exact_match']:.4f}" if test else "",
    )
    return summary


def run_digest(rc: RunConfig, meta: dict) -> str:
    """Identity of what a checkpoint may resume into: the run's config and its dataset's."""
    return rc.digest(extra=meta["config"])


def _train_step(model, optimizer, scaler, data: PairedData, tc, step: int, device, pad_id: int) -> dict:
    """One optimizer step over `batch_size` examples split into `micro_batches` chunks.

    The loss is summed over every target token of the whole batch and divided by
    their total count, so accumulation over micro-batches gives the same gradient as
    one big batch (equal tokens per step, the point of the efficiency study).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    indices = batch_indices(len(data), tc.batch_size, tc.seed, step - 1)
    chunks = [data.batch(chunk, pad_id) for chunk in indices.chunk(tc.micro_batches)]
    n_tokens = sum(int((tgt[:, 1:] != pad_id).sum()) for _, tgt in chunks)
    n_src_tokens = sum(int((src != pad_id).sum()) for src, _ in chunks)
    loss_total = torch.zeros((), device=device)
    for src, tgt in chunks:
        src, tgt = src.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        with _autocast(device, tc.precision):
            logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(
            logits.float().transpose(1, 2), tgt[:, 1:], ignore_index=pad_id,
            label_smoothing=tc.label_smoothing, reduction="sum",
        ) / n_tokens
        (scaler.scale(loss) if scaler else loss).backward()
        loss_total += loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm or float("inf"))
    loss_value = float(loss_total)
    lr = optimizer.param_groups[0]["lr"]
    if math.isfinite(loss_value):
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "kind": "train",
        "step": step,
        "loss": loss_value,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "step_time": time.perf_counter() - began,
        "tokens": n_tokens,
        "src_tokens": n_src_tokens,
        "peak_memory_bytes": devices.peak_memory_bytes(device),
    }


def _provenance(cfg: Config, rc: RunConfig, study, run, choice, model) -> dict:
    return {
        "study": study,
        "run": run,
        "scale": cfg.resolved_scale,
        "config": rc.model_dump(mode="json"),
        "seed": rc.train.seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": choice.description,
        "hardware": devices.hardware_description(),
        "git": provenance.git_commit(),
        "packages": provenance.package_versions(),
        "python": provenance.python_version(),
        "started_at": _now(),
    }
