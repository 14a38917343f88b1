"""How far the gradient accumulated over micro-batches is from the full-batch gradient.

With `train.micro_batches` k > 1 a step's gradient is the sum of k backward passes,
each micro-batch's loss divided by the step's token count (train/loop.py), which in
exact arithmetic is the gradient of one pass over the un-split batch. In floating point,
and more so under bf16/fp16 autocast, the two differ; `measure` reports by how much, as
the cosine similarity of the two and the relative norm of their difference,
||g_acc - g_full|| / ||g_full||.

The loop measures at every evaluation (step 0 and each `eval_every` step) on the batch
of the step that follows, with the parameters it has then: the gradient the next
optimizer step will compute. Both gradients are taken with dropout off (the model in
eval mode), so they differ only in how they were computed, not in their dropout masks,
and the numbers are deterministic. Under fp16 both backward passes are scaled by the
grad scaler's current scale and unscaled after, as the loop's are.

Nothing of the training state changes: no optimizer step, gradients cleared before and
after, the model's mode, the workload's carried state and the RNG states restored, so a
run resumes bit for bit whether or not a measurement fell before its checkpoint. The
full-batch pass holds the activations of the whole batch at once, the memory that
micro-batching avoids: the run's peak memory includes it (a step's peak does not).
"""

from __future__ import annotations

import torch

from tdiag import devices
from tdiag.config import TrainConfig
from tdiag.train.workload import Workload


def measure(model: torch.nn.Module, workload: Workload, step: int, train: TrainConfig, device: torch.device,
            scaler: torch.amp.GradScaler | None = None) -> dict:
    """`grad_cosine` and `grad_rel_diff` of the accumulated and the full-batch gradient of
    optimizer step `step`'s batch (1-based; the loop passes the next step's)."""
    was_training, carried = model.training, workload.state_dict()
    scale = scaler.get_scale() if scaler is not None else 1.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            model.eval()
            batch = workload.train_batch(step, train.seed)
            real = [part for i, part in enumerate(batch.micro) if i not in batch.fillers]
            accumulated = _gradient(model, workload, real, batch.n_tokens, train, device, scale)
            full = _gradient(model, workload, [batch.whole], batch.n_tokens, train, device, scale)
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
            workload.load_state_dict(carried)
    full_norm = full.norm()
    return {
        "grad_cosine": float(accumulated @ full / (accumulated.norm() * full_norm)),
        "grad_rel_diff": float((accumulated - full).norm() / full_norm),
    }


def _gradient(model, workload: Workload, parts: list, n_tokens: int, train: TrainConfig, device: torch.device,
              scale: float) -> torch.Tensor:
    """The gradient summed over the backward passes of `parts`, as one float64 vector
    (float64 so that the comparison adds no rounding of its own)."""
    model.zero_grad(set_to_none=True)
    dtype = devices.autocast_dtype(train.precision)
    for part in parts:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = workload.loss(model, part, n_tokens, train.label_smoothing)
        (loss * scale).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return torch.cat([g.flatten() for g in grads]).double() / scale
