"""One seed's memory measure (train/memory.py): saved activations, parts, checkpointing, no inheritance."""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tdiag.train.memory import CPU_MEASURE, MemoryMeter

CPU = torch.device("cpu")


class SavesGiven(torch.autograd.Function):
    """Identity on `x` that saves the tensors it is given for backward."""

    @staticmethod
    def forward(ctx, x, *saved):
        ctx.save_for_backward(*saved)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return (grad, *(None for _ in ctx.saved_tensors))


def meter_of(model: nn.Module) -> MemoryMeter:
    return MemoryMeter(model, torch.optim.Adam(model.parameters()), CPU)


def test_saved_bytes_count_each_storage_once_and_no_parameter():
    model = nn.Linear(100, 10)
    meter = meter_of(model)
    a = torch.randn(100)  # 400 bytes
    b = torch.randn(50, dtype=torch.float64)  # 400 bytes
    x = torch.randn(3, requires_grad=True)
    with meter.micro_batch():
        out = SavesGiven.apply(x, a, b, b[10:20], b, model.weight, model.weight[0])
    out.sum().backward()
    assert meter.end_step()["saved_bytes"] == a.nbytes + b.nbytes == 800


def test_a_micro_batch_shape_is_measured_once_then_its_count_reused():
    model = nn.Linear(4, 4)
    meter = meter_of(model)
    x = torch.ones(1, requires_grad=True)

    def step(micro, saved_size: int) -> int:
        with meter.micro_batch(micro):
            out = SavesGiven.apply(x, torch.zeros(saved_size))
        out.sum().backward()
        return meter.end_step()["saved_bytes"]

    first = (torch.zeros(8, 5, dtype=torch.long), torch.zeros(8, 6, dtype=torch.long))
    assert step(first, 100) == 400
    same_shape = (torch.ones(8, 5, dtype=torch.long), torch.ones(8, 6, dtype=torch.long))
    assert step(same_shape, 50) == 400, "a shape seen before is not hooked again: its count is reused"
    assert step((torch.zeros(8, 7, dtype=torch.long), first[1]), 50) == 200, "a new shape is measured"
    assert step(None, 30) == step(None, 20) + 40, "what has no shape is measured every time"


def test_a_step_records_its_largest_micro_batch_and_the_peak_adds_up_its_parts():
    model = nn.Linear(4, 4)
    optimizer = torch.optim.Adam(model.parameters())
    meter = MemoryMeter(model, optimizer, CPU)
    for size in (100, 300, 200):  # three micro-batches of one step
        with meter.micro_batch():
            out = SavesGiven.apply(torch.ones(1, requires_grad=True), torch.zeros(size))
        out.sum().backward()
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    record = meter.end_step()
    assert record["saved_bytes"] == 300 * 4
    parameter_bytes = (16 + 4) * 4
    state_bytes = 2 * parameter_bytes + 2 * 4  # Adam's two moments, and a step count per parameter
    summary = meter.summary()
    assert summary == {
        "peak_memory_bytes": 2 * parameter_bytes + state_bytes + 300 * 4,
        "memory_measure": CPU_MEASURE,
        "parameter_bytes": parameter_bytes,
        "gradient_bytes": parameter_bytes,
        "optimizer_state_bytes": state_bytes,
        "saved_bytes_max": 300 * 4,
    }
    assert record["peak_memory_bytes"] == summary["peak_memory_bytes"]
    with meter.micro_batch():
        SavesGiven.apply(torch.ones(1, requires_grad=True), torch.zeros(10)).sum().backward()
    assert meter.end_step() == {"saved_bytes": 40, "peak_memory_bytes": summary["peak_memory_bytes"]}


def train_one_step(width: int) -> int:
    """The peak of a fresh meter over one Adam step of an MLP `width` wide."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    optimizer = torch.optim.Adam(model.parameters())
    meter = MemoryMeter(model, optimizer, CPU)
    with meter.micro_batch():
        loss = model(torch.randn(32, width)).pow(2).mean()
    loss.backward()
    optimizer.step()
    return meter.end_step()["peak_memory_bytes"]


def test_a_later_meter_in_the_same_process_does_not_inherit_an_earlier_peak():
    small = train_one_step(8)
    big = train_one_step(512)
    assert big > 100 * small
    assert train_one_step(8) == small


def test_a_resumed_meter_keeps_the_peak_and_saved_bytes_of_the_steps_before():
    model = nn.Linear(2, 2)
    earlier = [{"saved_bytes": 5000, "peak_memory_bytes": 9000}, {"saved_bytes": None, "peak_memory_bytes": None}]
    meter = MemoryMeter(model, torch.optim.SGD(model.parameters()), CPU, earlier)
    assert meter.summary()["saved_bytes_max"] == 5000
    assert meter.peak() == max(9000, 2 * 6 * 4 + 5000)


def test_checkpointing_keeps_only_the_block_input_for_backward():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    meter = meter_of(block)
    x = torch.randn(8, 64, requires_grad=True)
    saved = {}
    for name, run in (("plain", block), ("checkpointed", lambda h: checkpoint(block, h, use_reentrant=False))):
        with meter.micro_batch():
            out = run(x)
        out.sum().backward()  # the recompute runs here, outside the count
        saved[name] = meter.end_step()["saved_bytes"]
    hidden = 8 * 256 * 4
    assert saved["plain"] == x.nbytes + 2 * hidden  # the first Linear's input, GELU's input, the second's input
    assert saved["checkpointed"] == x.nbytes


class FakeAllocator:
    """torch.cuda's peak statistics, for a machine without a GPU."""

    def __init__(self, current: int):
        self.current = self.peak = current

    def allocate_and_free(self, size: int) -> None:
        self.peak = max(self.peak, self.current + size)

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: self.reset())

    def reset(self) -> None:
        self.peak = self.current


def test_the_cuda_peak_is_the_seeds_own_and_leaves_evaluations_out(monkeypatch):
    allocator = FakeAllocator(current=1000)
    allocator.peak = 90_000  # an earlier run's peak in the same process
    allocator.install(monkeypatch)
    model = nn.Linear(2, 2)
    meter = MemoryMeter(model, torch.optim.SGD(model.parameters()), torch.device("cuda"))
    allocator.allocate_and_free(500)  # a training step
    assert meter.end_step()["peak_memory_bytes"] == 1500
    with meter.paused():
        allocator.allocate_and_free(5000)  # an evaluation
    allocator.allocate_and_free(200)
    assert meter.summary()["peak_memory_bytes"] == 1500
    assert meter.summary()["memory_measure"] == "cuda_max_allocated"
    allocator.allocate_and_free(700)
    assert meter.peak() == 1700
