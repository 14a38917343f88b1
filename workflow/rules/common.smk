# Load and validate params.yaml once. `--config` entries (nested, e.g.
# `--config studies='{toy: {train: {lr: 0.01}}}'`) reach every job through the
# TDIAG_OVERRIDES variable, not its command line: a rule reruns when the settings its
# stage uses change (its `fingerprint` param), not whenever any override does.
import fcntl
import json
import os
import shlex
import sys

from tdiag import config as tdiag_config
from tdiag import paths, plan
from tdiag.cli import OVERRIDES_ENV
from tdiag.report import claims as tdiag_claims

OVERRIDES = tdiag_config.overrides_from_mapping(config)
try:
    CFG = tdiag_config.load("params.yaml", OVERRIDES)
    STAGES = plan.stages(CFG)
    # A bad claims.yaml stops here, before any job, not at the first page hours later.
    tdiag_claims.load(paths.CLAIMS)
except (tdiag_config.ConfigError, tdiag_claims.ClaimsError) as err:
    sys.stderr.write(f"tdiag: error: {err}\n")
    sys.exit(2)

# Set (or cleared) on every invocation, so a job never sees an earlier run's overrides.
os.environ[OVERRIDES_ENV] = json.dumps(OVERRIDES)
TDIAG = [sys.executable, "-m", "tdiag"]


def per_attempt(minutes):
    """A rule's `runtime`: `minutes` on the first attempt, twice that on the first retry, ..."""
    return lambda wildcards, attempt: minutes * attempt


# The pages and tables `snakemake --report` shows, one category per study.
REPORT_CATEGORY = {str(paths.report_index()): "index"}
for _study in CFG.studies:
    REPORT_CATEGORY[str(paths.report_page(_study))] = _study
    REPORT_CATEGORY[str(paths.study_table(_study))] = _study


def reported(path):
    """`path`, flagged for `snakemake --report` when it is a page or a study table."""
    category = REPORT_CATEGORY.get(path)
    return report(path, category=category, labels={"file": os.path.basename(path)}) if category else path


# The profile sets `nolock: true`: Snakemake's lock files outlive a killed run and then
# refuse every later one until `--unlock`. This lock is the kernel's: it is held while
# this process lives, however it ends, and refuses a second run in the same folder.
RUN_LOCK = ".snakemake/tdiag-run.lock"
RUN_LOCK_HELD = []  # the open lock file: closing it would release the lock


onstart:
    os.makedirs(os.path.dirname(RUN_LOCK), exist_ok=True)
    _lock = open(RUN_LOCK, "a")
    try:
        fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.stderr.write(
            f"tdiag: error: another snakemake run is working in this folder ({RUN_LOCK} is locked); "
            "wait for it to finish or stop it, then run again\n"
        )
        sys.exit(2)
    RUN_LOCK_HELD.append(_lock)
