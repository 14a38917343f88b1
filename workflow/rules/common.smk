# Load and validate params.yaml once. `--config` entries (nested, e.g.
# `--config studies='{toy: {train: {lr: 0.01}}}'`) become `tdiag --set key.path=value`
# overrides of every stage command, so they reach the stages too.
import shlex
import sys

from tdiag import config as tdiag_config
from tdiag import plan

OVERRIDES = tdiag_config.overrides_from_mapping(config)
try:
    CFG = tdiag_config.load("params.yaml", OVERRIDES)
    STAGES = plan.stages(CFG)
except tdiag_config.ConfigError as err:
    sys.stderr.write(f"tdiag: error: {err}\n")
    sys.exit(2)

TDIAG = [sys.executable, "-m", "tdiag"] + [arg for o in OVERRIDES for arg in ("--set", o)]
# CPU threads per training job. The study's models are small enough that a step is
# dominated by per-op overhead, not arithmetic: one thread per job and one job per
# core is measured faster than two threads per job (see benchmarks/RESULTS.md).
TRAIN_THREADS = 1
