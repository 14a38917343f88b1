"""SGD (with or without momentum), Adam and AdamW through torch's fused kernels, without
`torch.optim.Optimizer`.

Why not `torch.optim` itself: a `torch.optim.Optimizer` imports `torch._dynamo` the first
time it is built, stepped, cleared or saved (`add_param_group`, `zero_grad`,
`state_dict` and `load_state_dict` are wrapped in `torch._disable_dynamo`, and `step`
calls `torch._dynamo.graph_break()`). That import took 2.3 s of this machine's CPU, in
every training and check process, and each Snakemake job is one; no run here compiles.

The arithmetic is torch's own: the same `torch._fused_sgd_`, `torch._fused_adam_` and
`torch._fused_adamw_` calls, with the same arguments and state, that `torch.optim` makes
with `fused=True`, so a step is bitwise the same (tests/test_fused_optimizer.py).
`state_dict()` has `torch.optim`'s layout (`state` keyed by parameter index,
`param_groups` with `params` as indices) and `load_state_dict` reads one that
`torch.optim` wrote, so checkpoints from before this module resume.

Like torch's fused optimizers it takes a GradScaler's `grad_scale` and `found_inf`
(`_step_supports_amp_scaling`): an fp16 step with an inf gradient is skipped inside the
kernel, with no host synchronisation.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch

HYPERPARAMETERS = {
    "sgd": ("lr", "momentum", "weight_decay"),
    "adam": ("lr", "betas", "eps", "weight_decay"),
    "adamw": ("lr", "betas", "eps", "weight_decay"),
}
"""What each kind reads from a parameter group (momentum 0 is plain SGD)."""

STEP_DTYPE = torch.float32
"""Adam's step count is a float32 tensor on the parameter's device, as torch's fused Adam keeps it."""


class FusedOptimizer:
    """One optimizer of `kind` ('sgd', 'adam' or 'adamw') over parameter groups.

    `groups` are dicts with `params` and the kind's HYPERPARAMETERS (a learning-rate
    schedule changes `lr` in place, as with torch.optim). AdamW decays each group by
    its own `weight_decay`; SGD and Adam add it as an L2 term to the gradient.
    """

    _step_supports_amp_scaling = True  # GradScaler hands over grad_scale/found_inf instead of syncing

    def __init__(self, kind: str, groups: Iterable[dict]):
        if kind not in HYPERPARAMETERS:
            raise ValueError(f"unknown optimizer kind {kind!r}; choose one of {sorted(HYPERPARAMETERS)}")
        self.kind = kind
        self.param_groups: list[dict] = []
        for group in groups:
            missing = [key for key in HYPERPARAMETERS[kind] if key not in group]
            if missing:
                raise ValueError(f"a {kind} parameter group needs {', '.join(missing)}")
            self.param_groups.append({**group, "params": list(group["params"])})
        self.state: defaultdict[torch.Tensor, dict] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (the others are left, as in torch).

        A GradScaler sets `grad_scale` and `found_inf` on the optimizer for the step and
        deletes them after, so they are read with getattr."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in with_grad):
                raise RuntimeError(f"the fused {self.kind} update takes dense gradients, and a parameter has a "
                                   "sparse one (an nn.Embedding with sparse=True): build it with sparse=False")
            for (device, _), params in _by_device_and_dtype(with_grad).items():
                scale = None if grad_scale is None else grad_scale.to(device)
                inf = None if found_inf is None else found_inf.to(device)
                if self.kind == "sgd":
                    self._sgd(group, params, scale, inf)
                else:
                    self._adam(group, params, scale, inf)

    def _sgd(self, group: dict, params: list[torch.Tensor], scale, found_inf) -> None:
        momentum = group["momentum"]
        buffers = []
        first_step = False
        if momentum != 0:
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            first_step = all(b is None for b in buffers)
            if first_step:  # the kernel fills them with the first gradients
                buffers = [torch.empty_like(p.grad) for p in params]
                for p, buffer in zip(params, buffers):
                    self.state[p]["momentum_buffer"] = buffer
        torch._fused_sgd_(
            params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"], momentum=momentum,
            lr=group["lr"], dampening=0.0, nesterov=False, maximize=False, is_first_step=first_step,
            grad_scale=scale, found_inf=found_inf,
        )

    def _adam(self, group: dict, params: list[torch.Tensor], scale, found_inf) -> None:
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=STEP_DTYPE, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
        beta1, beta2 = group["betas"]
        kernel(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [], steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False, grad_scale=scale, found_inf=found_inf,
        )
        if found_inf is not None:  # a skipped step does not count
            torch._foreach_sub_(steps, [found_inf] * len(steps))

    def state_dict(self) -> dict:
        """torch.optim's layout; the tensors are the live state (torch.save copies them)."""
        index = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """Take a saved state and the saved groups' hyperparameters (lr included), as
        torch.optim does. Raises ValueError when the group layout differs."""
        groups = saved["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups)
        ):
            raise ValueError("the saved optimizer's parameter groups do not match this model's")
        by_index = {}
        for g, own in zip(groups, self.param_groups):
            by_index.update(zip(g["params"], own["params"]))
        state: defaultdict[torch.Tensor, dict] = defaultdict(dict)
        for i, values in saved["state"].items():
            p = by_index[i]
            state[p] = {key: _placed(key, value, p) for key, value in values.items()}
        self.state = state
        self.param_groups = [{**g, "params": own["params"]} for g, own in zip(groups, self.param_groups)]


def _placed(key: str, value, param: torch.Tensor):
    """A saved state value on the parameter's device: the step count as the fused kernels
    keep it, moments in the parameter's dtype (torch.optim's rule)."""
    if not isinstance(value, torch.Tensor):
        return value
    if key == "step":
        return value.to(dtype=STEP_DTYPE, device=param.device)
    return value.to(dtype=param.dtype, device=param.device)


def _by_device_and_dtype(params: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    """One fused call takes tensors of one device and dtype."""
    grouped: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        grouped.setdefault((p.device, p.dtype), []).append(p)
    return grouped
