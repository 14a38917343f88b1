"""The checks of one configured run (`tdiag check`), written to `paths.run_checks`."""

from __future__ import annotations

from pathlib import Path

import torch

from tdiag import atomic, paths, provenance
from tdiag.checks.core import ENCODER_DECODER, LANGUAGE_MODEL, CheckResult, Subject
from tdiag.checks.suite import run_checks
from tdiag.config import Config
from tdiag.data.kinds import kind_of
from tdiag.models import build_model
from tdiag.train.loop import read_meta

CONTRACTS = {"encoder_decoder": ENCODER_DECODER, "decoder_only": LANGUAGE_MODEL}
"""The calling contract (core.py) of each dataset kind's model family (data/kinds.py): a
run's model, shipped or the user's own (`arch: custom`), keeps the contract of the data
it trains on."""


def run_subject(cfg: Config, study: str, run: str, root: Path = Path(".")) -> Subject:
    """The run's model as the training loop builds it, on the first training batch of
    its first seed, on the CPU whatever the run trains on (the checks are tiny)."""
    rc = cfg.run(study, run)
    kind = kind_of(cfg.datasets[rc.dataset])
    meta = read_meta(root, rc.dataset, kind)
    workload = kind.workload(root / kind.folder(rc.dataset), meta, rc.train, torch.device("cpu"))
    seed = rc.seed_values()[0]
    return Subject(
        kind=CONTRACTS[kind.model_family],
        factory=lambda s: build_model(rc.model, *workload.vocab_sizes, workload.pad_id),
        vocab_sizes=workload.vocab_sizes,
        batch=tuple(workload.train_batch(1, seed).whole),
        pad_id=workload.pad_id,
        seed=seed,
    )


def check_run(cfg: Config, study: str, run: str, root: Path = Path(".")) -> list[CheckResult]:
    """Run every applicable check on the run's model and write them to `paths.run_checks`."""
    subject = run_subject(cfg, study, run, root)
    results = run_checks(subject)
    atomic.write_json(root / paths.run_checks(study, run), {
        "study": study,
        "run": run,
        "seed": subject.seed,
        "kind": subject.kind,
        "passed": all(r.passed for r in results),
        "checks": [r.to_json() for r in results],
        "git": provenance.git_commit(root),
        "packages": provenance.package_versions(),
    })
    return results
