"""What `tdiag train` checks before the training loop starts: a custom model's contract.

A run with `model.arch: custom` builds the user's model from its factory and runs one
forward on two rows of the run's first training batch, on the CPU
(models/custom.py), before `train_run` touches any file of the run: a model that does
not meet the contract of its dataset's family (`DatasetKind.model_family`) stops the
command with one line naming the factory's key (`RunConfig.factory_key`), exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tdiag.config import Config
from tdiag.data.kinds import kind_of
from tdiag.models import custom
from tdiag.train.loop import read_meta


def check_custom_model(cfg: Config, study: str, run: str, root: Path) -> None:
    """Nothing for a run of this project's own models; the contract check for a custom one."""
    rc = cfg.run(study, run)
    if rc.model.arch != "custom":
        return
    kind = kind_of(cfg.datasets[rc.dataset])
    meta = read_meta(root, rc.dataset, kind)
    workload = kind.workload(root / kind.folder(rc.dataset), meta, rc.train, torch.device("cpu"))
    first = workload.train_batch(1, rc.train.seed).micro[0]
    if kind.model_family == "encoder_decoder":  # (src, tgt): the model reads tgt without its last token
        inputs = (first[0][:2], first[1][:2, :-1])
    else:  # (tokens, next tokens)
        inputs = (first[0][:2],)
    custom.check(rc.factory_key(study, run), rc.model, kind.model_family, workload.vocab_sizes, workload.pad_id, inputs)
