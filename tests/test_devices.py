"""Device choice: slot locks across processes, CPU fallback, precision support."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from tdiag import devices
from tdiag.devices import (
    autocast_dtype,
    claim_slot,
    default_lock_dir,
    hardware_description,
    peak_memory_bytes,
    select_device,
    supports_precision,
    visible_devices,
)
from tdiag.errors import UserError

# fork starts a child in milliseconds; spawn would re-import torch in each one.
_MP = multiprocessing.get_context("fork")


class _Waited(Exception):
    pass


def _refuse_to_wait(message: str) -> None:
    raise _Waited(message)


def _claim_and_hold(lock_dir, n_slots, hold_seconds, results, jobs_per_device) -> None:
    waited = []
    with claim_slot(lock_dir, n_slots, poll_seconds=0.05, on_wait=waited.append,
                    jobs_per_device=jobs_per_device) as slot:
        start = time.monotonic()
        time.sleep(hold_seconds)
        end = time.monotonic()
    results.put((slot.index, start, end, len(waited)))


def _claimers(lock_dir, processes: int, n_slots: int, jobs_per_device: int = 1) -> list[tuple]:
    """Start `processes` jobs that each claim a slot and hold it 0.3 s; their
    (device index, start, end, times told to wait)."""
    results = _MP.Queue()
    workers = [
        _MP.Process(target=_claim_and_hold, args=(lock_dir, n_slots, 0.3, results, jobs_per_device), daemon=True)
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    records = [results.get(timeout=20) for _ in workers]
    for worker in workers:
        worker.join(timeout=5)
        assert worker.exitcode == 0
    return records


def test_concurrent_claimers_never_share_a_slot(tmp_path):
    records = _claimers(tmp_path, processes=4, n_slots=2)

    assert {index for index, *_ in records} == {0, 1}
    for index in (0, 1):
        intervals = sorted((start, end) for i, start, end, _ in records if i == index)
        for (_, earlier_end), (later_start, _) in zip(intervals, intervals[1:]):
            assert later_start >= earlier_end
    # Four jobs over two slots: at least two had to wait, and each said so once.
    wait_calls = [waits for *_, waits in records]
    assert sum(wait_calls) >= 2
    assert max(wait_calls) == 1


def _hold_forever(lock_dir, ready) -> None:
    slot = claim_slot(lock_dir, 1)
    ready.set()
    time.sleep(60)
    slot.release()


def test_killed_holder_leaves_no_stale_lock(tmp_path):
    ready = _MP.Event()
    holder = _MP.Process(target=_hold_forever, args=(tmp_path, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(timeout=10)
        with pytest.raises(_Waited):
            claim_slot(tmp_path, 1, poll_seconds=0.01, on_wait=_refuse_to_wait)
        assert (tmp_path / "slot-0.lock").read_text().strip() == str(holder.pid)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=5)

    with claim_slot(tmp_path, 1, poll_seconds=0.01, on_wait=_refuse_to_wait) as slot:
        assert slot.index == 0


def test_released_slot_can_be_claimed_again(tmp_path):
    first = claim_slot(tmp_path, 1)
    first.release()
    first.release()
    with claim_slot(tmp_path, 1, on_wait=_refuse_to_wait) as second:
        assert second.index == 0


def test_dropping_the_slot_object_releases_the_lock(tmp_path):
    claim_slot(tmp_path, 1)
    with claim_slot(tmp_path, 1, on_wait=_refuse_to_wait) as slot:
        assert slot.index == 0


def test_lock_dir_is_created_shared(tmp_path):
    lock_dir = tmp_path / "nested" / "locks"
    with claim_slot(lock_dir, 1):
        assert lock_dir.stat().st_mode & 0o777 == 0o777
        assert (lock_dir / "slot-0.lock").stat().st_mode & 0o777 == 0o666


def test_no_cuda_gives_cpu_and_takes_no_lock(tmp_path):
    choice = select_device(tmp_path, env={}, cuda_count=lambda: 0)
    assert choice.device == torch.device("cpu")
    assert choice.slot is None
    assert choice.description == "cpu (no CUDA)"
    assert list(tmp_path.iterdir()) == []


def test_cuda_visible_devices_is_respected_without_a_lock(tmp_path):
    choice = select_device(tmp_path, env={"CUDA_VISIBLE_DEVICES": "3"}, cuda_count=lambda: 2)
    assert choice.device == torch.device("cuda:0")
    assert choice.slot is None
    assert "CUDA_VISIBLE_DEVICES=3" in choice.description
    assert list(tmp_path.iterdir()) == []


def test_empty_cuda_visible_devices_gives_cpu(tmp_path):
    choice = select_device(tmp_path, env={"CUDA_VISIBLE_DEVICES": ""}, cuda_count=lambda: 0)
    assert choice.device == torch.device("cpu")
    assert choice.slot is None


def _hold_until_killed(lock_dir, keys, ready) -> None:
    slot = claim_slot(lock_dir, keys)
    ready.set()
    time.sleep(60)
    slot.release()


@pytest.mark.parametrize("delete", ["file", "folder"])
def test_deleting_a_held_lock_file_does_not_free_its_slot(tmp_path, delete):
    lock_dir = tmp_path / "locks"
    ready = _MP.Event()
    holder = _MP.Process(target=_hold_until_killed, args=(lock_dir, 1, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(timeout=10)
        # What a temp cleaner does: the holder keeps its lock on an unlinked file.
        if delete == "file":
            (lock_dir / "slot-0.lock").unlink()
        else:
            shutil.rmtree(lock_dir)
        with pytest.raises(_Waited):
            claim_slot(lock_dir, 1, poll_seconds=0.01, on_wait=_refuse_to_wait)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=5)
    # A killed holder of a deleted file leaves nothing behind either.
    with claim_slot(lock_dir, 1, poll_seconds=0.01, on_wait=_refuse_to_wait) as slot:
        assert slot.index == 0


def test_a_claim_holds_the_file_now_at_the_path(tmp_path, monkeypatch):
    real_flock = fcntl.flock
    replaced = []

    def flock_after_a_cleaner(file, operation):
        # Between our open and our flock, the file is deleted and another job makes a new one.
        if not replaced:
            path = tmp_path / "slot-0.lock"
            path.unlink()
            path.touch()
            replaced.append(path)
        return real_flock(file, operation)

    monkeypatch.setattr(devices.fcntl, "flock", flock_after_a_cleaner)
    with claim_slot(tmp_path, 1, on_wait=_refuse_to_wait):
        assert replaced
        with open(tmp_path / "slot-0.lock") as other:
            with pytest.raises(BlockingIOError):
                real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_overlapping_device_lists_exclude_each_other(tmp_path):
    with claim_slot(tmp_path, ["0", "1"], on_wait=_refuse_to_wait) as first:
        assert (first.index, first.key) == (0, "0")
        with claim_slot(tmp_path, ["1", "2"], on_wait=_refuse_to_wait) as second:
            assert (second.index, second.key) == (0, "1")
            with pytest.raises(_Waited):
                claim_slot(tmp_path, ["1", "0"], poll_seconds=0.01, on_wait=_refuse_to_wait)
            uuid = "GPU-5f2c1a3e-0000-4000-8000-000000000001"
            with claim_slot(tmp_path, ["0", uuid], on_wait=_refuse_to_wait) as third:
                assert (third.index, third.key) == (1, uuid)


def test_visible_devices():
    assert visible_devices(None, 3) == ["0", "1", "2"]
    assert visible_devices("0,1", 2) == ["0", "1"]
    assert visible_devices(" GPU-a , GPU-b ", 2) == ["GPU-a", "GPU-b"]
    # CUDA stops at the first entry naming no device; the count says how many are real.
    assert visible_devices("1,7,0", 1) == ["1"]
    assert visible_devices("", 0) == []


class _FakeCuda:
    """Stands in for torch.cuda: `count` devices, counted under the job's CUDA_VISIBLE_DEVICES.

    `driver_started` models CUDA's driver having read CUDA_VISIBLE_DEVICES before
    select_device ran (so narrowing it later changes nothing).
    """

    def __init__(self, monkeypatch, env: dict, count: int, torch_initialized=False, driver_started=False):
        self.env, self.total = env, count
        self.seen = env.get("CUDA_VISIBLE_DEVICES") if driver_started else None
        self.driver_started = driver_started
        self.device = None
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: torch_initialized)
        monkeypatch.setattr(torch.cuda, "init", self._init)
        monkeypatch.setattr(torch.cuda, "set_device", self._set_device)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")

    def _init(self) -> None:
        if not self.driver_started:
            self.seen, self.driver_started = self.env.get("CUDA_VISIBLE_DEVICES"), True

    def _set_device(self, device) -> None:
        self.device = device

    def count(self) -> int:
        visible = self.seen if self.driver_started else self.env.get("CUDA_VISIBLE_DEVICES")
        return len(visible_devices(visible, self.total))


def test_preset_device_list_is_claimed_among_and_narrowed(tmp_path, monkeypatch):
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    cuda = _FakeCuda(monkeypatch, env, count=4)
    with claim_slot(tmp_path, ["2"]):  # another job holds GPU 2
        choice = select_device(tmp_path, env=env, cuda_count=cuda.count, on_wait=_refuse_to_wait)
    assert choice.slot is not None and choice.slot.key == "3"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert choice.device == torch.device("cuda:0") == cuda.device
    assert "GPU 3" in choice.description
    with pytest.raises(_Waited):
        claim_slot(tmp_path, ["3"], poll_seconds=0.01, on_wait=_refuse_to_wait)
    choice.slot.release()


def test_unset_visible_devices_claims_by_index_and_narrows(tmp_path, monkeypatch):
    env = {}
    cuda = _FakeCuda(monkeypatch, env, count=2)
    with claim_slot(tmp_path, ["0"]):
        choice = select_device(tmp_path, env=env, cuda_count=cuda.count, on_wait=_refuse_to_wait)
    with choice.slot:
        assert choice.slot.key == "1"
        assert env == {"CUDA_VISIBLE_DEVICES": "1"}
        assert choice.device == torch.device("cuda:0")


@pytest.mark.parametrize("late", ["torch", "driver"])
def test_cuda_started_before_the_claim_addresses_the_device_by_index(tmp_path, monkeypatch, late):
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    cuda = _FakeCuda(
        monkeypatch, env, count=4, torch_initialized=late == "torch", driver_started=True
    )
    with claim_slot(tmp_path, ["2"]):
        choice = select_device(tmp_path, env=env, cuda_count=cuda.count, on_wait=_refuse_to_wait)
    with choice.slot:
        # Narrowing would do nothing now, so the variable keeps saying what CUDA sees.
        assert env == {"CUDA_VISIBLE_DEVICES": "2,3"}
        assert choice.device == torch.device("cuda:1") == cuda.device


def test_default_lock_dir_is_one_folder_whatever_tmpdir_is(tmp_path, monkeypatch):
    folders = set()
    for tmpdir in (tmp_path / "a", tmp_path / "b"):
        tmpdir.mkdir()
        monkeypatch.setenv("TMPDIR", str(tmpdir))
        monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
        assert tempfile.gettempdir() == str(tmpdir)
        folders.add(default_lock_dir())
    assert len(folders) == 1
    assert not str(folders.pop()).startswith(str(tmp_path))


def _unusable_folders(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return {"a file": (a_file, "is a file"), "under a file": (a_file / "locks", "cannot be created")}


@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable"])
def test_unusable_lock_folder_is_one_line_naming_the_key(tmp_path, monkeypatch, case):
    if case == "unwritable":
        # Tests may run as root, which chmod does not stop: refuse the open instead.
        lock_dir, problem = tmp_path, "is not writable"

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(devices.os, "open", refuse)
    else:
        lock_dir, problem = _unusable_folders(tmp_path)[case]
    with pytest.raises(UserError) as raised:
        select_device(lock_dir, env={}, cuda_count=lambda: 2)
    message = str(raised.value)
    assert "\n" not in message
    assert str(lock_dir) in message and problem in message and "devices.lock_dir" in message


def test_unusable_lock_folder_through_the_cli_is_one_line(tiny_project):
    # Two simulated GPUs, so `tdiag train` must claim one; the lock folder is a file.
    lock_dir = tiny_project / "not-a-folder"
    lock_dir.write_text("")
    script = (
        "import sys, torch; torch.cuda.device_count = lambda: 2; "
        "from tdiag.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--set", f"devices.lock_dir={lock_dir}", "train", "toy", "copy"],
        cwd=tiny_project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tdiag: error: GPU lock folder")
    assert "devices.lock_dir" in lines[0]


def test_cpu_needs_no_lock_folder(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert select_device(a_file, env={}, cuda_count=lambda: 0).device == torch.device("cpu")


def test_cpu_precisions():
    cpu = torch.device("cpu")
    assert supports_precision(cpu, "fp32") is None
    assert supports_precision(cpu, "bf16") is None
    reason = supports_precision(cpu, "fp16")
    assert reason is not None and "fp16" in reason and "cpu" in reason
    with pytest.raises(ValueError, match="fp8"):
        supports_precision(cpu, "fp8")


def test_autocast_dtypes():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16


def test_cpu_peak_memory_and_hardware():
    assert peak_memory_bytes(torch.device("cpu")) > 0
    hardware = hardware_description()
    assert set(hardware) == {
        "cpu_model",
        "logical_cores",
        "memory_bytes",
        "gpus",
        "torch_version",
        "cuda_version",
    }
    assert hardware["logical_cores"] >= 1
    assert hardware["memory_bytes"] > 0
    assert hardware["torch_version"] == torch.__version__


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_gpu_is_claimed_and_runs_bf16(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    choice = select_device(tmp_path, env=env)
    assert choice.slot is not None
    with choice.slot:
        narrowed = env.get("CUDA_VISIBLE_DEVICES") == choice.slot.key
        assert choice.device == torch.device("cuda", 0 if narrowed else choice.slot.index)
        assert torch.cuda.current_device() == choice.device.index
        assert (tmp_path / f"slot-{choice.slot.index}.lock").exists()
        assert supports_precision(choice.device, "bf16") is None
        a = torch.randn(64, 64, device=choice.device)
        with torch.autocast("cuda", dtype=autocast_dtype("bf16")):
            product = a @ a
        assert product.dtype == torch.bfloat16
        assert peak_memory_bytes(choice.device) > 0
        assert hardware_description()["gpus"]


def test_jobs_per_gpu_spreads_over_the_devices_then_shares_them(tmp_path):
    """Two simulated devices, two jobs each: the first two claims take one slot of each
    device, the next two share them, and a fifth job waits."""
    held = [claim_slot(tmp_path, 2, on_wait=_refuse_to_wait, jobs_per_device=2) for _ in range(4)]
    assert [slot.key for slot in held] == ["0", "1", "0", "1"]
    assert len({slot.path for slot in held}) == 4
    with pytest.raises(_Waited):
        claim_slot(tmp_path, 2, poll_seconds=0.01, on_wait=_refuse_to_wait, jobs_per_device=2)
    # A job with one job per device still sees each device's first slot as taken.
    with pytest.raises(_Waited):
        claim_slot(tmp_path, 2, poll_seconds=0.01, on_wait=_refuse_to_wait)
    held[0].release()
    with claim_slot(tmp_path, 2, on_wait=_refuse_to_wait, jobs_per_device=2) as slot:
        assert slot.key == "0" and slot.path == held[0].path
    for slot in held[1:]:
        slot.release()


def test_jobs_per_gpu_slots_exclude_across_processes(tmp_path):
    """Six processes over one simulated device with three slots: never more than three
    hold it at once."""
    intervals = [(start, end) for _, start, end, _ in _claimers(tmp_path, processes=6, n_slots=1, jobs_per_device=3)]
    for start, _ in intervals:
        holding = sum(1 for s, e in intervals if s <= start < e)
        assert holding <= 3
    assert max(sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals) >= 2


def test_jobs_per_gpu_is_passed_to_the_claim(tmp_path, monkeypatch):
    env = {}
    cuda = _FakeCuda(monkeypatch, env, count=1)
    with claim_slot(tmp_path, ["0"]):  # another job holds the device's first slot
        choice = select_device(tmp_path, env=env, cuda_count=cuda.count, on_wait=_refuse_to_wait, jobs_per_gpu=2)
    with choice.slot:
        assert choice.slot.key == "0" and choice.slot.path.name == "slot-0+1.lock"
