"""The SLURM profile, without a cluster: what each kind of rule asks for, read from a dry
run of `snakemake --profile workflow/profiles/slurm` on the tiny project, and the sbatch
arguments the SLURM executor plugin builds from it."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO
from test_pipeline import _project_copy, _run
from tdiag import config, plan

submit_string = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402

PROFILE = "workflow/profiles/slurm"
KINDS = {"data": ("data_", "bpe_"), "train": ("train_",), "collect": ("collect_",), "report": ("report_",)}


class _Resources(dict):
    """A job's resources as the plugin reads them: `.get(name)` and `.name`."""

    __getattr__ = dict.__getitem__


def _dry_run_jobs(project: Path, *args: str) -> dict[str, dict]:
    """rule -> {"threads": n, "resources": {name: value}} of every job the dry run lists."""
    done = _run([sys.executable, "-m", "snakemake", "--profile", PROFILE, "-n", *args], project)
    jobs = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", done.stdout + done.stderr):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if not rule:
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        found = re.search(r"^\s+resources: (.+)$", block, re.MULTILINE)
        resources = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
        jobs[rule.group(1)] = {"threads": int(threads.group(1)) if threads else 1, "resources": resources}
    return jobs


def _sbatch(rule: str, job: dict) -> str:
    """The plugin's own sbatch command line for the job (account and partition left to
    the cluster's defaults, as the profile leaves them)."""
    resources = _Resources({k: int(v) if v.isdigit() else v for k, v in job["resources"].items()})
    stub = SimpleNamespace(resources=resources, threads=job["threads"], name=rule)
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": rule, "account": "", "partition": "",
              "workdir": "."}
    return submit_string.get_submit_command(stub, params) + set_gres_string(stub)


def _option(call: str, flag: str) -> str | None:
    found = re.search(rf"(?:^| ){re.escape(flag)}[= ](\S+)", call)
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def smoke_calls(tmp_path_factory) -> dict[str, str]:
    project = _project_copy(tmp_path_factory.mktemp("slurm"))
    jobs = _dry_run_jobs(project, "--config", "scale=smoke")
    return {rule: _sbatch(rule, job) for rule, job in jobs.items() if rule != "all"}


def _kind(rule: str) -> str | None:
    return next((kind for kind, prefixes in KINDS.items() if rule.startswith(prefixes)), None)


def test_every_kind_of_rule_is_submitted_with_its_resources(smoke_calls: dict[str, str]):
    by_kind = {kind: {r: c for r, c in smoke_calls.items() if _kind(r) == kind} for kind in KINDS}
    assert all(by_kind.values()), f"a kind of rule is missing from the dry run: {by_kind}"
    for kind, calls in by_kind.items():
        for rule, call in calls.items():
            gpus = _option(call, "--gpus")
            assert (gpus == "1") == (kind == "train"), f"{rule}: --gpus {gpus}: {call}"
            assert _option(call, "--cpus-per-task") == "1", call
            assert int(_option(call, "--mem")) >= 1000, call  # mem_mb from the rule, in MB
            assert _option(call, "-t") is not None, call


def test_a_run_on_two_devices_asks_for_two_gpus_two_cpus_and_twice_the_memory(tmp_path: Path):
    project = _project_copy(tmp_path)
    jobs = _dry_run_jobs(project, "--config", "scale=smoke",
                          "studies={toy: {runs: {copy: {train: {devices: 2}}}}}")
    two, one = (_sbatch(rule, jobs[rule]) for rule in ("train_toy_copy", "train_toy_dates"))
    assert (_option(two, "--gpus"), _option(two, "--cpus-per-task")) == ("2", "2"), two
    assert (_option(one, "--gpus"), _option(one, "--cpus-per-task")) == ("1", "1"), one
    assert int(_option(two, "--mem")) == 2 * int(_option(one, "--mem"))


def test_a_smoke_job_asks_for_minutes(smoke_calls: dict[str, str]):
    for rule, call in smoke_calls.items():
        minutes = int(_option(call, "-t"))
        assert 1 <= minutes <= 30, f"{rule} asks for {minutes} minutes at the smoke scale: {call}"


def test_the_committed_study_asks_for_minutes_at_smoke_scale_and_hours_at_full():
    """On the committed params.yaml: at smoke scale every job fits in half an hour; at full
    scale a training job asks for more host memory (torch's CUDA libraries) and the longest
    for over an hour (a full wmt14 run on a GPU may well ask for less time than its smoke
    run on one CPU core)."""
    smoke, full = ({s.name: s for s in plan.stages(config.load(REPO / "params.yaml", [f"scale={scale}"]))}
                   for scale in ("smoke", "full"))
    assert max(s.resources.runtime_min for s in smoke.values()) <= 30
    for name, stage in smoke.items():
        if stage.gpus:
            assert full[name].resources.mem_mb > stage.resources.mem_mb, name
    # The longest full run (toy's embedding grid: 3 seeds x 24,000 steps) asks for over an hour,
    # and no job for more than a day.
    assert 60 < max(s.resources.runtime_min for s in full.values()) <= 24 * 60
