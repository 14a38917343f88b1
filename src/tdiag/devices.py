"""Which device a training job runs on, and what that device can do.

Snakemake's `--resources gpu=N` only caps how many `gpu=1` jobs run at once; it does not
say which GPU each one gets, and without the flag it starts every job at once. So a job
claims a device itself, holds it while it keeps its `Slot`, and waits (does not fail)
while every device is busy.

A claim on one device is two kernel objects, both dropped by the kernel when the process
dies, so a killed job (even by SIGKILL) leaves nothing stale behind:

- a non-blocking `flock` on `<lock folder>/slot-<device>.lock`, the lock every job sees,
  also across containers that share the folder. After locking, the locked file must
  still be the one at the path (same device and inode); if a cleaner deleted or replaced
  it in between, the claim is retried, so a claimant never holds a file nobody else sees.
- a guard: a Unix socket bound to an abstract name derived from the lock folder and the
  device (Linux). A file lock alone cannot survive a deleted file: the holder keeps its
  lock on the unlinked inode while the next claimant creates a new file at the same path
  and locks that. A holder cannot re-link its file, and a pid written into the file goes
  with the file, so the claim needs an object a temp cleaner cannot delete. An abstract
  socket name lives in the kernel, not the file system; binding it fails while the holder
  lives, and frees the instant it dies. It is per network namespace, so jobs in
  containers with their own network that share one lock folder rely on the flock alone.

The lock folder is one fixed path for the whole machine (`default_lock_dir`), not under
`$TMPDIR`, since jobs with different `TMPDIR`s must still exclude each other.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import platform
import re
import resource
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from tdiag.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Abstract socket names (a leading NUL byte) are a Linux feature.
_GUARDED = sys.platform.startswith("linux")


class Slot:
    """One claimed device: the claim lives as long as this object's lock file and guard.

    `index` is the device's position among the devices the job could see, `key` the
    device as `CUDA_VISIBLE_DEVICES` names it. Releasing closes both, which ends the
    claim; so does garbage collection or the process exiting, whichever comes first.
    """

    def __init__(self, index: int, key: str, path: Path, file, guard: socket.socket | None) -> None:
        self.index = index
        self.key = key
        self.path = path
        self._file = file
        self._guard = guard

    def release(self) -> None:
        """End the claim; safe to call more than once."""
        if self._guard is not None:
            self._guard.close()
        if not self._file.closed:
            self._file.close()

    # Closing here rather than leaving it to the objects' own finalisers keeps a dropped
    # slot from raising a ResourceWarning; the claim ends with the object either way.
    __del__ = release

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Slot(index={self.index}, key={self.key!r}, path={str(self.path)!r})"


def default_lock_dir() -> Path:
    """The folder every job on this machine agrees on without being told.

    A fixed path, never `tempfile.gettempdir()`: that follows `TMPDIR`, and two jobs with
    different `TMPDIR`s would lock different folders and share a GPU. `/tmp` exists and is
    writable for everyone on every Linux machine, unlike `/run/lock` or `/var/lock`.
    """
    return Path("/tmp/tdiag-gpu-locks")


def visible_devices(cuda_visible: str | None, count: int) -> list[str]:
    """The devices a job may claim, as `CUDA_VISIBLE_DEVICES` entries, in CUDA's order.

    `cuda_visible` is the preset `CUDA_VISIBLE_DEVICES` (None when unset) and `count`
    the number of devices CUDA sees under it. Unset, every device is named by its index.
    Preset, its entries (indices, `GPU-<uuid>`s or MIG names) are kept as written; CUDA
    stops at the first entry that names no device, so only the first `count` are real.
    """
    if cuda_visible is None:
        return [str(i) for i in range(count)]
    return _entries(cuda_visible)[:count]


def _entries(cuda_visible: str) -> list[str]:
    return [entry for entry in (part.strip() for part in cuda_visible.split(",")) if entry]


def claim_slot(
    lock_dir: Path,
    devices: int | Sequence[str],
    poll_seconds: float = 0.5,
    on_wait: Callable[[str], None] | None = None,
    jobs_per_device: int = 1,
) -> Slot:
    """Claim a free slot on one of `devices`, waiting as long as it takes for one.

    `devices` is the list of device names (`CUDA_VISIBLE_DEVICES` entries) or a number
    n, meaning "0".."n-1". Each device has `jobs_per_device` slots (small models use a
    sliver of a modern GPU, so several jobs may share one); the first slot of every
    device is tried before any device's second, so jobs spread over the devices before
    they share one. Jobs exclude each other on every slot they share, so jobs given
    overlapping lists never hold more than that many slots of one device (given the same
    `jobs_per_device`). `on_wait(message)` is called once, the first time every slot is
    taken, so the caller can log that it is waiting rather than appear hung. An unusable
    lock folder raises `UserError`.
    """
    keys = [str(i) for i in range(devices)] if isinstance(devices, int) else list(devices)
    if not keys:
        raise ValueError("claim_slot needs at least one device")
    if jobs_per_device < 1:
        raise ValueError(f"jobs_per_device must be at least 1, got {jobs_per_device}")
    told = False
    while True:
        # Made again on every round: a cleaner may remove the folder while we wait.
        _make_shared_dir(lock_dir)
        for share in range(jobs_per_device):
            for index, key in enumerate(keys):
                slot = _try_lock(lock_dir, index, key, share)
                if slot is not None:
                    return slot
        if on_wait is not None and not told:
            on_wait(f"all {len(keys) * jobs_per_device} GPU slots in {lock_dir} are taken; waiting for a free one")
            told = True
        time.sleep(poll_seconds)


def claim_slots(
    lock_dir: Path,
    devices: Sequence[str],
    wanted: int,
    poll_seconds: float = 0.5,
    on_wait: Callable[[str], None] | None = None,
    jobs_per_device: int = 1,
) -> list[Slot]:
    """Claim slots on `wanted` different devices among `devices`, all at once.

    All or nothing: a round that finds fewer free devices releases what it locked and
    waits, so two multi-device jobs that each hold part of what they need can never wait
    on each other forever. Slots as in `claim_slot` (first slots before second ones).
    """
    keys = list(devices)
    if not 1 <= wanted <= len(keys):
        raise ValueError(f"cannot claim {wanted} of {len(keys)} devices")
    told = False
    while True:
        _make_shared_dir(lock_dir)
        held: list[Slot] = []
        for share in range(jobs_per_device):
            for index, key in enumerate(keys):
                if len(held) < wanted and key not in {slot.key for slot in held}:
                    slot = _try_lock(lock_dir, index, key, share)
                    if slot is not None:
                        held.append(slot)
        if len(held) == wanted:
            return held
        for slot in held:
            slot.release()
        if on_wait is not None and not told:
            on_wait(f"fewer than {wanted} GPUs have a free slot in {lock_dir}; waiting for {wanted} at once")
            told = True
        time.sleep(poll_seconds)


def _unusable(lock_dir: Path, problem: str) -> UserError:
    return UserError(
        f"GPU lock folder {lock_dir} {problem}; set devices.lock_dir in params.yaml "
        "to a folder every job on this machine can write"
    )


def _make_shared_dir(lock_dir: Path) -> None:
    # Other users' jobs on the same machine must be able to lock the same files, or two
    # users' jobs would share a GPU without knowing it.
    # Only a folder made here is opened up; a folder the user chose keeps its mode.
    try:
        lock_dir.mkdir(parents=True)
    except FileExistsError:
        if not lock_dir.is_dir():
            raise _unusable(lock_dir, "is a file, not a folder") from None
        return
    except OSError as error:
        raise _unusable(lock_dir, f"cannot be created ({error.strerror})") from None
    try:
        os.chmod(lock_dir, 0o777)
    except OSError:
        pass


def _slot_path(lock_dir: Path, key: str, share: int = 0) -> Path:
    # Device names are indices, GPU-<uuid>s or MIG names (old ones hold '/'). A device's
    # first slot keeps the one-job-per-device name, whatever `jobs_per_gpu` is.
    suffix = f"+{share}" if share else ""
    return lock_dir / f"slot-{re.sub(r'[^A-Za-z0-9._-]', '_', key)}{suffix}.lock"


def _try_lock(lock_dir: Path, index: int, key: str, share: int = 0) -> Slot | None:
    """Lock slot `share` of device `key` if it is free; None when another live job holds it."""
    path = _slot_path(lock_dir, key, share)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            _make_shared_dir(lock_dir)  # removed since the round began: make it again
            continue
        except PermissionError as error:
            raise _unusable(lock_dir, f"is not writable ({error.strerror})") from None
        except OSError as error:
            raise _unusable(lock_dir, f"cannot hold lock files ({error.strerror})") from None
        file = os.fdopen(fd, "r+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        if _still_at(path, fd):
            break
        # Deleted or replaced between open and flock: this lock guards a file no one
        # else will open. Lock whatever is at the path now.
        file.close()
    try:
        guard = _bind_guard(lock_dir, f"{key}+{share}" if share else key)
    except _HeldElsewhere:
        file.close()
        return None
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass
    # The pid is for a person looking at the folder; the claim is the flock and guard.
    file.truncate(0)
    file.write(f"{os.getpid()}\n")
    file.flush()
    return Slot(index, key, path, file, guard)


def _still_at(path: Path, fd: int) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    locked = os.fstat(fd)
    return (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino)


class _HeldElsewhere(Exception):
    """A live job holds the device's guard (its lock file was deleted under it)."""


def _bind_guard(lock_dir: Path, key: str) -> socket.socket | None:
    """Bind device `key`'s guard socket; None where there can be none.

    The name hashes the resolved folder, so tests' private folders and a user's
    `devices.lock_dir` exclude only jobs using the same folder.
    """
    if not _GUARDED:
        return None
    digest = hashlib.sha256(f"{lock_dir.resolve()}\0{key}".encode()).hexdigest()[:40]
    guard = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        guard.bind(f"\0tdiag-gpu-slot-{digest}")
    except OSError as error:
        guard.close()
        if error.errno == errno.EADDRINUSE:
            raise _HeldElsewhere from None
        return None  # a sandbox without Unix sockets: the flock still holds
    return guard


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
    jobs_per_gpu: int = 1,
) -> DeviceChoice:
    """Choose the one device for a training job; call once, before any other CUDA work.

    Without CUDA the job runs on the CPU and takes no lock. A `CUDA_VISIBLE_DEVICES`
    naming one device (a cluster scheduler's choice) is kept, without a lock. Otherwise
    the job claims a free device among those it can see: all of them, or the entries of
    a preset multi-device `CUDA_VISIBLE_DEVICES` (`lock_dir` None means
    `default_lock_dir()`). It then narrows `CUDA_VISIBLE_DEVICES` in `env` to the claimed
    entry and uses `cuda:0`, so neither it nor its child processes can touch another
    job's GPU. Counting devices does not initialise CUDA (torch counts through NVML until
    then), so the narrowing takes effect; if CUDA was initialised before this call, the
    variable is left alone and the device is addressed by its visible index instead.
    `jobs_per_gpu` jobs may hold one device at once (`devices.jobs_per_gpu`).
    `cuda_count` replaces `torch.cuda.device_count` so tests can simulate GPUs.
    """
    count_devices = cuda_count or torch.cuda.device_count
    count = count_devices()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if count == 0:
        if visible is not None:
            return DeviceChoice(
                torch.device("cpu"), None, f"cpu (CUDA_VISIBLE_DEVICES={visible!r} shows no GPU)"
            )
        return DeviceChoice(torch.device("cpu"), None, "cpu (no CUDA)")
    if visible is not None and len(_entries(visible)) == 1:
        return DeviceChoice(
            torch.device("cuda:0"), None, f"cuda:0 (CUDA_VISIBLE_DEVICES={visible})"
        )
    entries = visible_devices(visible, count)
    slot = claim_slot(lock_dir or default_lock_dir(), entries, on_wait=on_wait, jobs_per_device=jobs_per_gpu)
    device = _narrow_to(env, visible, slot, count_devices)
    torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device)
    return DeviceChoice(
        device,
        slot,
        f"{device} ({name}, GPU {slot.key}, slot lock {slot.path})",
    )


def select_devices(
    wanted: int,
    lock_dir: Path | None,
    env,
    key: str,
    cuda_count: Callable[[], int] | None = None,
    on_wait: Callable[[str], None] | None = None,
    jobs_per_gpu: int = 1,
) -> tuple[list[Slot], str]:
    """Choose `wanted` GPUs for the processes of one data-parallel run; call before CUDA starts.

    Returns the slots that reserve them (release them when the run ends) and a
    description. Without CUDA the processes run on the CPU (gloo) and nothing is
    claimed. A preset `CUDA_VISIBLE_DEVICES` of exactly `wanted` entries (a cluster
    scheduler's choice) is kept without locks; otherwise the GPUs are claimed among those
    visible (`claim_slots`) and `CUDA_VISIBLE_DEVICES` in `env` is narrowed to them, so
    process `LOCAL_RANK` uses the `LOCAL_RANK`-th. Fewer visible GPUs than `wanted` is a
    `UserError` naming `key`.
    """
    count = (cuda_count or torch.cuda.device_count)()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if count == 0:
        return [], f"{wanted} CPU processes (no CUDA; gloo)"
    entries = visible_devices(visible, count)
    if len(entries) < wanted:
        raise UserError(f"{key}: {wanted}, but this job sees {len(entries)} GPU(s) "
                        f"(CUDA_VISIBLE_DEVICES={visible!r}); lower it or give the job more GPUs")
    if visible is not None and len(entries) == wanted:
        return [], f"GPUs {visible} (CUDA_VISIBLE_DEVICES)"
    slots = claim_slots(lock_dir or default_lock_dir(), entries, wanted, on_wait=on_wait,
                        jobs_per_device=jobs_per_gpu)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.key for slot in slots)
    return slots, f"GPUs {env['CUDA_VISIBLE_DEVICES']} (slot locks in {slots[0].path.parent})"


def _narrow_to(env, visible: str | None, slot: Slot, count_devices: Callable[[], int]) -> torch.device:
    """Make the claimed device the only one CUDA shows, if CUDA has not started yet."""
    if not torch.cuda.is_initialized():
        env["CUDA_VISIBLE_DEVICES"] = slot.key
        torch.cuda.init()
        if count_devices() == 1:
            return torch.device("cuda", 0)
        # Something initialised the driver before torch did, so it read the old list.
    if visible is None:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return torch.device("cuda", slot.index)


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

    glibc serves a large allocation (from 128 KiB, its threshold rising up to 32 MiB as
    it sees them freed) with a fresh mmap and unmaps it on free, and returns the top of
    the heap past its trim threshold, so a tensor allocated each step page-faults its
    whole size in every time; raising the mmap and trim thresholds to 1 GiB lets the
    heap reuse it. Every training run on the CPU calls it (train/loop.py), as do the
    estimate probe and the benchmarks. Measured (benchmarks/RESULTS.md): about twice the
    tokens per second on the WikiText-2 LSTM, whose logits (tokens x vocabulary, 38 MB)
    are the largest; 7-11% less time per step on the copy task, whose activations are
    each well under 1 MB.
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
    """Peak memory so far: tensors allocated on a GPU, or the process's peak RSS on CPU
    (for the benchmarks; a training run measures its own, train/memory.py)."""
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
    return cpuinfo_field("model name") or platform.processor()


def cpu_vendor() -> str:
    """The CPU's vendor string (`GenuineIntel`, `AuthenticAMD`, ...) where Linux says it, else ""."""
    return cpuinfo_field("vendor_id")


def cpuinfo_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first CPU's `name` field in /proc/cpuinfo, or "" (no such field, or no such file)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return ""
