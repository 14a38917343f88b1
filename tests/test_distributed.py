"""One run on several devices (train/distributed.py): two gloo processes on the CPU,
started by `tdiag train` through torchrun, take the same steps as one process with the
same global batch, only rank 0 writes, and a killed two-process run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tdiag, tiny_params, write_params
from tdiag import devices, paths
from tdiag.errors import UserError
from tdiag.train import distributed
from test_lm_workload import LSTM_RUN, lm_project

TOY = {"max_steps": 12, "eval_every": 6, "checkpoint_every": 6, "batch_size": 20}


def toy_project(folder: Path, **train) -> Path:
    """The tiny toy study with run `one` (one process) and `two` (two), same global batch."""
    folder.mkdir(parents=True, exist_ok=True)
    write_params(folder, tiny_params({"studies": {"toy": {
        "train": {**TOY, **train},
        "runs": {"one": {"dataset": "copy"}, "two": {"dataset": "copy", "train": {"devices": 2}}},
    }}}))
    tdiag("data", "synth", "copy", cwd=folder)
    return folder


def records(project: Path, study: str, run: str, kind: str = "train") -> list[dict]:
    lines = (project / paths.seed_metrics(study, run, 0)).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_steps(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-6), x["step"]
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4), x["step"]
        assert y["tokens"] == x["tokens"]  # the global batch's, not one process's share


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_two_gloo_processes_take_the_steps_of_one_with_the_same_global_batch(tmp_path: Path, micro_batches: int):
    """With micro-batches, each process accumulates its two before DDP reduces once."""
    project = toy_project(tmp_path, micro_batches=micro_batches)
    tdiag("train", "toy", "one", "--threads", "1", cwd=project)
    done = tdiag("train", "toy", "two", "--threads", "1", cwd=project)
    assert "2 processes on 2 CPU processes (no CUDA; gloo)" in done.stderr
    assert "rank 0 of 2" in done.stderr and "rank 1 of 2" not in done.stderr  # rank 0 alone logs
    assert_same_steps(records(project, "toy", "one"), records(project, "toy", "two"))
    one, two = (json.loads((project / paths.run_summary("toy", run)).read_text()) for run in ("one", "two"))
    assert two["status"] == "completed"
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-5)
    config = json.loads((project / paths.seed_config("toy", "two", 0)).read_text())
    assert config["config"]["train"]["devices"] == 2


def test_length_buckets_smaller_than_the_parts_leave_no_process_without_a_share(tmp_path: Path):
    """With `batch_tokens` a step is a length bucket, which may hold fewer sentences than
    micro_batches x devices parts: the empty parts add nothing, and every process still
    takes part in each gradient reduction (it used to wait forever)."""
    project = toy_project(tmp_path, batch_tokens=16, micro_batches=2)
    tdiag("--set=studies.toy.runs.one.train.micro_batches=4", "train", "toy", "one", "--threads", "1", cwd=project)
    tdiag("train", "toy", "two", "--threads", "1", cwd=project, timeout=300)
    one, two = records(project, "toy", "one"), records(project, "toy", "two")
    assert min(r["sentences"] for r in one) < 4  # some steps had an empty part
    assert_same_steps(one, two)


def test_an_lstm_keeps_each_process_s_streams_hidden_state(tmp_path: Path):
    """Each process trains on its own rows of the streams and carries their LSTM state."""
    project = lm_project(tmp_path, epochs=1)
    tdiag("data", "prepare", "wikitext2", cwd=project)
    tdiag("train", "lm", LSTM_RUN, "--threads", "1", cwd=project)
    single = records(project, "lm", LSTM_RUN)
    (project / paths.run_dir("lm", LSTM_RUN)).rename(project / "single")
    tdiag(f"--set=studies.lm.runs.{LSTM_RUN}.train.devices=2", "train", "lm", LSTM_RUN, "--threads", "1",
          cwd=project)
    assert_same_steps(single, records(project, "lm", LSTM_RUN))


def _run_until_checkpoint(project: Path, run: str, step: int) -> None:
    """Start `tdiag train toy <run>` and SIGKILL its whole process group (torchrun and its
    processes) once the checkpoint of `step` is on disk."""
    checkpoint = project / paths.seed_checkpoint("toy", run, 0)
    job = subprocess.Popen([sys.executable, "-m", "tdiag", "train", "toy", run, "--threads", "1"], cwd=project,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None:
            if checkpoint.exists() and records_at_least(project, run, step):
                break
            time.sleep(0.05)
        assert job.poll() is None, "the run finished before it could be killed"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def records_at_least(project: Path, run: str, step: int) -> bool:
    try:
        return any(r["step"] >= step for r in records(project, "toy", run))
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def test_a_killed_two_process_run_resumes_as_if_never_stopped(tmp_path: Path):
    """Dropout on, so the losses after the resume match only if every process's RNG state
    came back from the checkpoint; the job's process group is killed as Snakemake or a
    scheduler would, and torchrun's workers (in sessions of their own) must end with it."""
    straight = toy_project(tmp_path / "straight", max_steps=200, checkpoint_every=50, eval_every=200)
    killed = toy_project(tmp_path / "killed", max_steps=200, checkpoint_every=50, eval_every=200)
    for project in (straight, killed):
        params = project / "params.yaml"
        params.write_text(params.read_text().replace("dropout: 0.0", "dropout: 0.1", 1))
    tdiag("train", "toy", "two", "--threads", "1", cwd=straight)
    _run_until_checkpoint(killed, "two", 51)
    assert not (killed / paths.run_summary("toy", "two")).exists()
    tdiag("train", "toy", "two", "--threads", "1", cwd=killed)
    summary = json.loads((killed / paths.seed_summary("toy", "two", 0)).read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] and summary["resumed_from"][0] >= 50
    assert [r["loss"] for r in records(killed, "toy", "two")] == [r["loss"] for r in records(straight, "toy", "two")]


def test_torchrun_started_with_another_count_than_train_devices_is_refused():
    with pytest.raises(UserError, match=r"studies.toy.runs.one.train.devices: 1, but this process is one of 2"):
        distributed.check_world(distributed.Group(rank=0, world=2), 1, "studies.toy.runs.one.train.devices")


def test_the_global_batch_must_split_evenly_over_devices(tmp_path: Path):
    write_params(tmp_path, tiny_params({"studies": {"toy": {"train": {"batch_size": 50, "devices": 4}}}}))
    done = tdiag("validate", cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert "studies.toy.train" in done.stderr and "micro_batches x devices (1 x 4)" in done.stderr
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------- claiming GPUs


def test_a_multi_device_run_claims_its_gpus_and_narrows_what_cuda_shows(tmp_path: Path):
    env = {}
    slots, description = devices.select_devices(2, tmp_path, env, "key", cuda_count=lambda: 4)
    try:
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and len(slots) == 2
        other = {}
        more, _ = devices.select_devices(2, tmp_path, other, "key", cuda_count=lambda: 4)
        assert other["CUDA_VISIBLE_DEVICES"] == "2,3"  # the next job gets the two others
        for slot in more:
            slot.release()
    finally:
        for slot in slots:
            slot.release()


def test_a_run_asking_more_gpus_than_visible_is_one_line_naming_its_key(tmp_path: Path):
    with pytest.raises(UserError, match=r"^studies.lm.runs.x.train.devices: 4, but this job sees 2 GPU"):
        devices.select_devices(4, tmp_path, {}, "studies.lm.runs.x.train.devices", cuda_count=lambda: 2)


def test_without_cuda_the_processes_run_on_the_cpu_and_claim_nothing(tmp_path: Path):
    env = {}
    assert devices.select_devices(2, tmp_path, env, "key", cuda_count=lambda: 0) == (
        [], "2 CPU processes (no CUDA; gloo)")
    assert env == {}


def test_a_scheduler_s_preset_devices_are_kept_without_locks(tmp_path: Path):
    env = {"CUDA_VISIBLE_DEVICES": "5,7"}
    slots, _ = devices.select_devices(2, tmp_path, env, "key", cuda_count=lambda: 2)
    assert slots == [] and env["CUDA_VISIBLE_DEVICES"] == "5,7"


class _Waited(Exception):
    pass


def _stop_waiting(message: str) -> None:
    raise _Waited(message)


def test_claiming_several_gpus_is_all_or_nothing(tmp_path: Path):
    """A job that finds only one of the two GPUs it needs free holds neither while it
    waits, so two such jobs can never each hold one and wait for the other forever."""
    held = devices.claim_slot(tmp_path, ["0"])
    try:
        with pytest.raises(_Waited, match="fewer than 2 GPUs"):
            devices.claim_slots(tmp_path, ["0", "1"], 2, on_wait=_stop_waiting)
        free = devices.claim_slot(tmp_path, ["1"], on_wait=_stop_waiting)  # released by the waiting job
        free.release()
    finally:
        held.release()
