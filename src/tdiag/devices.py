"""Which device a training job runs on, and what that device can do.

Snakemake's `--resources gpu=N` only caps how many `gpu=1` jobs run at once; it does not
say which GPU each one gets, and without the flag it starts every job at once. So a job
claims a device itself: one lock file per device index under a shared folder, taken with
a non-blocking `flock`, held while the job keeps its `Slot`, and waited for (not failed on)
when every device is busy. The kernel drops `flock` locks when a process dies, so a
killed job leaves no stale lock behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

PRECISIONS = ("fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Slot:
    """One claimed slot: the lock lives as long as this object's open file.

    Releasing closes the file, which drops the lock; so does garbage collection or the
    process exiting, whichever comes first.
    """

    def __init__(self, index: int, path: Path, file) -> None:
        self.index = index
        self.path = path
        self._file = file

    def release(self) -> None:
        """Drop the lock; safe to call more than once."""
        if not self._file.closed:
            self._file.close()

    # Closing here rather than leaving it to the file's own finaliser keeps a dropped
    # slot from raising a ResourceWarning; the lock ends with the object either way.
    __del__ = release

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Slot(index={self.index}, path={str(self.path)!r})"


def default_lock_dir() -> Path:
    """A folder every job on this machine agrees on without being told."""
    return Path(tempfile.gettempdir()) / "tdiag-gpu-locks"


def claim_slot(
    lock_dir: Path,
    n_slots: int,
    poll_seconds: float = 0.5,
    on_wait: Callable[[str], None] | None = None,
) -> Slot:
    """Claim a free slot in 0..n_slots-1, waiting as long as it takes for one.

    `on_wait(message)` is called once, the first time every slot is taken, so the caller
    can log that it is waiting rather than appear hung.
    """
    if n_slots < 1:
        raise ValueError(f"n_slots must be at least 1, got {n_slots}")
    _make_shared_dir(lock_dir)
    told = False
    while True:
        for index in range(n_slots):
            slot = _try_lock(lock_dir, index)
            if slot is not None:
                return slot
        if on_wait is not None and not told:
            on_wait(f"all {n_slots} GPU slots in {lock_dir} are taken; waiting for a free one")
            told = True
        time.sleep(poll_seconds)


def _make_shared_dir(lock_dir: Path) -> None:
    # Other users' jobs on the same machine must be able to lock the same files, or two
    # users' jobs would share a GPU without knowing it.
    # Only a folder made here is opened up; a folder the user chose keeps its mode.
    try:
        lock_dir.mkdir(parents=True)
    except FileExistsError:
        return
    try:
        os.chmod(lock_dir, 0o777)
    except OSError:
        pass


def _try_lock(lock_dir: Path, index: int) -> Slot | None:
    path = lock_dir / f"slot-{index}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError as error:
        raise PermissionError(
            f"cannot open GPU lock file {path} ({error.strerror}); "
            "make the lock folder writable for everyone or pass another lock folder"
        ) from None
    file = os.fdopen(fd, "r+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass
    # The pid is for a person looking at the folder; the lock itself is the flock.
    file.truncate(0)
    file.write(f"{os.getpid()}\n")
    file.flush()
    return Slot(index, path, file)


def cuda_available() -> bool:
    """Whether this machine has a usable CUDA device (what `scale: auto` follows)."""
    return torch.cuda.is_available()


@dataclass(frozen=True)
class DeviceChoice:
    """The device a job uses, the slot that reserves it (if any), and why, in words."""

    device: torch.device
    slot: Slot | None
    description: str


def select_device(
    lock_dir: Path | None,
    env=os.environ,
    cuda_count: Callable[[], int] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> DeviceChoice:
    """Choose the one device for a training job; call once, before any other CUDA work.

    A `CUDA_VISIBLE_DEVICES` set by a cluster scheduler or a user is respected: the job
    uses the first visible device and takes no lock, since whoever set it already chose.
    Otherwise a free GPU is claimed among all of them (`lock_dir` None means
    `default_lock_dir()`). The claimed device is addressed by explicit index
    (`cuda:<i>`) rather than by narrowing `CUDA_VISIBLE_DEVICES`: counting devices
    already makes CUDA read that variable, so changing it afterwards would do nothing.
    `cuda_count` replaces `torch.cuda.device_count` so tests can simulate GPUs.
    """
    count = (cuda_count or torch.cuda.device_count)()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        if count == 0:
            return DeviceChoice(
                torch.device("cpu"), None, f"cpu (CUDA_VISIBLE_DEVICES={visible!r} shows no GPU)"
            )
        return DeviceChoice(
            torch.device("cuda:0"), None, f"cuda:0 (CUDA_VISIBLE_DEVICES={visible})"
        )
    if count == 0:
        return DeviceChoice(torch.device("cpu"), None, "cpu (no CUDA)")
    slot = claim_slot(lock_dir or default_lock_dir(), count, on_wait=on_wait)
    device = torch.device("cuda", slot.index)
    torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device)
    return DeviceChoice(device, slot, f"{device} ({name}, slot lock {slot.path})")


def supports_precision(device: torch.device, precision: str) -> str | None:
    """None when `device` can train in `precision`, else a one-line reason for a person."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        # Emulated bf16 on pre-Ampere GPUs runs, but far slower than fp32: refuse it.
        with torch.cuda.device(device):
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if precision == "bf16" and not native_bf16:
            name = torch.cuda.get_device_name(device)
            return (
                f"bf16 needs a GPU with native bf16 (Ampere or newer); {name} has none, "
                "use fp16 or fp32"
            )
        return None
    if precision == "fp16":
        return f"fp16 with a grad scaler needs a CUDA device; use fp32 or bf16 on {device.type}"
    return None


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision`; None means run without autocast (fp32)."""
    return _AUTOCAST_DTYPES[precision]


def retain_freed_host_memory() -> bool:
    """Keep freed CPU tensors' memory in the process for reuse (glibc only; True if set).

    glibc serves every allocation over 32 MiB with a fresh mmap and unmaps it on free,
    so a tensor that size allocated each step (a language model's logits: tokens x
    vocabulary) page-faults its whole size in every time; raising the mmap and trim
    thresholds to 1 GiB lets the heap reuse it. Measured on the WikiText-2 LSTM:
    about twice the tokens per second on one CPU thread (benchmarks/RESULTS.md).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: tensors allocated on a GPU, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return peak if sys.platform == "darwin" else peak * 1024


def hardware_description() -> dict:
    """What the report states about the machine; reads local facts only, never blocks."""
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "gpus": gpus,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()
