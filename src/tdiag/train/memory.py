"""The memory one seed's training holds, measured while it trains.

The run's peak is measured one of two ways, named in its summary as `memory_measure`:

- "cuda_max_allocated" on a GPU: the caching allocator's peak of allocated bytes
  (`torch.cuda.max_memory_allocated`), reset once when the seed starts training, so it
  is this seed's own peak; evaluations are left out of it.
- "cpu_tensor_bytes" on CPU. The process's resident memory only grows, and a run
  trained after another in the same process would inherit the first one's peak, so
  what the model holds is counted instead: its parameters, a gradient per parameter
  that requires one, the optimizer's state, and the largest activations saved for
  backward by any micro-batch so far. Transients (a matmul's output freed before
  backward, the allocator's slack) are not counted: it is a floor, not the RSS.

Activations saved for backward are counted on every device: each tensor autograd
saves passes through `torch.autograd.graph.saved_tensors_hooks` while a micro-batch's
forward runs, and each underlying storage is counted once at its full size (a view
keeps its whole base alive). Parameters' own storages are not activations (they are
counted as parameters), though a copy of one (an autocast cast) is. Under non-reentrant
activation checkpointing (`torch.utils.checkpoint`, `use_reentrant=False`) the hooks
see what a checkpointed region keeps, its inputs, and not the tensors it recomputes in
backward (tests/test_memory.py).

What a forward saves is a function of its inputs' shapes (and dtypes): the same ops on
tensors of the same sizes save the same storages. So each micro-batch shape is measured
once, the first time it comes, and its count reused after; the hooks, a Python call per
saved tensor, cost the copy task's step about 4% when they ran every step
(benchmarks/step_overhead.py). A model whose saved tensors depend on the values
(data-dependent routing) is measured on the first batch of each shape only.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

CUDA_MEASURE = "cuda_max_allocated"
CPU_MEASURE = "cpu_tensor_bytes"


def _storage_key(tensor: torch.Tensor) -> tuple[torch.device, int]:
    return tensor.device, tensor.untyped_storage().data_ptr()


def shape_key(micro) -> tuple | None:
    """The shapes and dtypes of the tensors a micro-batch is made of (nested in tuples and
    lists), or None when it holds anything else and cannot be told apart by them."""
    if isinstance(micro, torch.Tensor):
        return (tuple(micro.shape), micro.dtype)
    if isinstance(micro, (tuple, list)) and micro:
        parts = tuple(shape_key(part) for part in micro)
        return None if None in parts else parts
    return None


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count it once)."""
    sizes = {_storage_key(t): t.untyped_storage().nbytes() for t in tensors}
    return sum(sizes.values())


class MemoryMeter:
    """One seed's memory: created when the seed starts training, with its model and optimizer.

    `micro_batch()` wraps each micro-batch's forward, `end_step()` closes each optimizer
    step and `paused()` wraps each evaluation. `earlier` are the train records kept from
    before a resume: their saved bytes and peaks carry over, so a resumed seed's peak
    covers all its steps.
    """

    def __init__(self, model: nn.Module, optimizer, device: torch.device, earlier: Iterable[dict] = ()):
        """`optimizer`: anything with torch.optim's `state` (a FusedOptimizer or a torch.optim class)."""
        self.device = device
        self.measure = CUDA_MEASURE if device.type == "cuda" else CPU_MEASURE
        self._optimizer = optimizer
        parameters = list(model.parameters())  # a tied weight once
        self._parameter_storages = {_storage_key(p) for p in parameters}
        self.parameter_bytes = sum(p.nbytes for p in parameters)
        self.gradient_bytes = sum(p.nbytes for p in parameters if p.requires_grad)
        earlier = list(earlier)
        self.saved_bytes_max = max((r.get("saved_bytes") or 0 for r in earlier), default=0)
        # The peak before the allocator's last reset (an evaluation's) or before a resume.
        self._kept_peak = max((r.get("peak_memory_bytes") or 0 for r in earlier), default=0)
        self._step_saved = 0
        self._saved_by_shape: dict[tuple, int] = {}
        if self.measure == CUDA_MEASURE:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    @contextlib.contextmanager
    def micro_batch(self, micro=None) -> Iterator[None]:
        """Count the storages autograd saves for backward inside (the forward of micro-batch
        `micro`), or take the count of the last micro-batch of its shape (`shape_key`)."""
        shape = shape_key(micro)
        if shape in self._saved_by_shape:
            yield
            self._step_saved = max(self._step_saved, self._saved_by_shape[shape])
            return
        saved: dict[tuple[torch.device, int], int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            key = _storage_key(tensor)
            if key not in self._parameter_storages:
                saved[key] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
        if shape is not None:
            self._saved_by_shape[shape] = sum(saved.values())
        self._step_saved = max(self._step_saved, sum(saved.values()))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave what runs inside (an evaluation) out of the CUDA peak: the peak so far is
        kept, and the allocator's is reset after it. Nothing to do on CPU, where an
        evaluation saves nothing for backward."""
        if self.measure != CUDA_MEASURE:
            yield
            return
        torch.cuda.synchronize(self.device)
        self._kept_peak = self.peak()
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def end_step(self) -> dict:
        """The step's `saved_bytes` (most of any of its micro-batches) and the seed's
        `peak_memory_bytes` so far; call after the optimizer's step, which creates its state."""
        saved, self._step_saved = self._step_saved, 0
        self.saved_bytes_max = max(self.saved_bytes_max, saved)
        return {"saved_bytes": saved, "peak_memory_bytes": self.peak()}

    def optimizer_state_bytes(self) -> int:
        state = self._optimizer.state.values()
        return storage_bytes(v for s in state for v in s.values() if isinstance(v, torch.Tensor))

    def peak(self) -> int:
        """The seed's peak so far, by its device's measure."""
        if self.measure == CUDA_MEASURE:
            now = torch.cuda.max_memory_allocated(self.device)
        else:
            now = self.parameter_bytes + self.gradient_bytes + self.optimizer_state_bytes() + self.saved_bytes_max
        return max(now, self._kept_peak)

    def summary(self) -> dict:
        """The seed summary's memory fields: the peak, its measure, and the parts the CPU
        measure adds up (recorded on a GPU too, beside the allocator's peak)."""
        return {
            "peak_memory_bytes": self.peak(),
            "memory_measure": self.measure,
            "parameter_bytes": self.parameter_bytes,
            "gradient_bytes": self.gradient_bytes,
            "optimizer_state_bytes": self.optimizer_state_bytes(),
            "saved_bytes_max": self.saved_bytes_max,
        }
