"""One run on several devices: `torchrun` processes and DistributedDataParallel.

A run with `train.devices: N > 1` trains as N processes started by PyTorch's own
launcher (`python -m torch.distributed.run`, i.e. `torchrun`): `tdiag train` starts them
itself (`launch`), or a user starts `torchrun --nproc-per-node N -m tdiag train ...`.
NCCL joins them on CUDA (one GPU each), gloo on the CPU, so the whole path runs and is
tested on a machine without a GPU.

Every process builds the same step batch (a pure function of seed and step) split into
`micro_batches x N` micro-batches and trains on its own `micro_batches` of them
(`own_micro_batches`): N processes see exactly the global batch one process would. A
micro-batch's loss is its summed token loss over the whole step's token count; DDP
averages gradients over the N processes, so each process scales its loss by N before
backward and the averaged gradient is the global batch's. The
logged loss is the sum over processes (`sum_`). Only rank 0 writes (metrics,
checkpoints, summaries, logs); a checkpoint holds every rank's RNG and workload state
(`gather`), so a killed N-process run resumes as it would have gone on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from tdiag.errors import UserError


@dataclass(frozen=True)
class Group:
    """This process's place among the run's processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's files: rank 0 alone."""
        return self.rank == 0

    def own_micro_batches(self, micro: list, per_process: int) -> list:
        """This rank's share of a step's `per_process x world` micro-batches."""
        return micro[self.rank * per_process:(self.rank + 1) * per_process]

    def sum_(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over every process (itself when not distributed)."""
        if self.active:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def gather(self, obj: Any) -> list | None:
        """Every rank's `obj`, in rank order, on every rank; None when not distributed."""
        if not self.active:
            return None
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Group()


def from_env(env=os.environ) -> Group:
    """The group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), or `SINGLE`."""
    if "WORLD_SIZE" not in env:
        return SINGLE
    return Group(rank=int(env["RANK"]), world=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0)))


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when the process that started it ends.

    torchrun starts its workers in sessions of their own, so killing a training job's
    process group (Snakemake, a scheduler, `kill -9 -<pgid>`) would leave them training
    on, and writing the run's files beside the job's next attempt. With this in torchrun
    and in each worker, the end of the job's first process ends them all; the next
    attempt resumes from the last checkpoint. Elsewhere than on Linux: nothing.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def device_of(group: Group) -> torch.device:
    """A process's device: GPU `LOCAL_RANK` of those the launcher was given, else the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def join(group: Group, device: torch.device) -> None:
    """Join the process group: NCCL on CUDA, gloo on the CPU; end with torchrun (`die_with_parent`)."""
    die_with_parent()
    if group.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=group.rank,
                                world_size=group.world)


def leave(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, group: Group, device: torch.device) -> torch.nn.Module:
    """The module a distributed step trains through (DDP), or `model` itself."""
    if not group.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or `model`): what a workload checks the class of."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def check_world(group: Group, devices: int, key: str) -> None:
    """A process started by torchrun must be one of exactly `devices` (the run's `train.devices`)."""
    if group.world != devices:
        raise UserError(
            f"{key}: {devices}, but this process is one of {group.world} started by torchrun; "
            f"set {key}={group.world} (--set) or start {devices} process(es)"
        )


def launch_command(processes: int, argv: Sequence[str]) -> list[str]:
    """torchrun starting `processes` copies of `tdiag <argv>` on this machine (a free port
    on localhost: `--standalone`)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "tdiag", *argv]


def launch(processes: int, argv: Sequence[str], env: dict) -> int:
    """Run `tdiag <argv>` as `processes` torchrun processes and wait; their exit status."""
    return subprocess.run(launch_command(processes, argv), env=env, preexec_fn=die_with_parent).returncode
