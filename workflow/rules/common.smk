# Load and validate params.yaml once; `--config key.path=value` entries become
# `tdiag --set` overrides of every stage command, so they reach the stages too.
import json
import shlex
import sys

from tdiag import config as tdiag_config
from tdiag import plan

OVERRIDES = [f"{key}={json.dumps(value)}" for key, value in config.items()]
try:
    CFG = tdiag_config.load("params.yaml", OVERRIDES)
except tdiag_config.ConfigError as err:
    sys.stderr.write(f"tdiag: error: {err}\n")
    sys.exit(2)

STAGES = plan.stages(CFG)
TDIAG = [sys.executable, "-m", "tdiag"] + [arg for o in OVERRIDES for arg in ("--set", o)]
# CPU threads for a training job; on CPU-only machines this also keeps two trainings
# from fighting over the same cores.
TRAIN_THREADS = 2
