"""Device choice: slot locks across processes, CPU fallback, precision support."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch

from tdiag.devices import (
    autocast_dtype,
    claim_slot,
    hardware_description,
    peak_memory_bytes,
    select_device,
    supports_precision,
)

# fork starts a child in milliseconds; spawn would re-import torch in each one.
_MP = multiprocessing.get_context("fork")


class _Waited(Exception):
    pass


def _refuse_to_wait(message: str) -> None:
    raise _Waited(message)


def _claim_and_hold(lock_dir, n_slots, hold_seconds, results) -> None:
    waited = []
    with claim_slot(lock_dir, n_slots, poll_seconds=0.05, on_wait=waited.append) as slot:
        start = time.monotonic()
        time.sleep(hold_seconds)
        end = time.monotonic()
    results.put((slot.index, start, end, len(waited)))


def test_concurrent_claimers_never_share_a_slot(tmp_path):
    results = _MP.Queue()
    workers = [
        _MP.Process(target=_claim_and_hold, args=(tmp_path, 2, 0.3, results), daemon=True)
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    records = [results.get(timeout=10) for _ in workers]
    for worker in workers:
        worker.join(timeout=5)
        assert worker.exitcode == 0

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
        assert choice.device == torch.device("cuda", choice.slot.index)
        assert torch.cuda.current_device() == choice.slot.index
        assert (tmp_path / f"slot-{choice.slot.index}.lock").exists()
        assert supports_precision(choice.device, "bf16") is None
        a = torch.randn(64, 64, device=choice.device)
        with torch.autocast("cuda", dtype=autocast_dtype("bf16")):
            product = a @ a
        assert product.dtype == torch.bfloat16
        assert peak_memory_bytes(choice.device) > 0
        assert hardware_description()["gpus"]
