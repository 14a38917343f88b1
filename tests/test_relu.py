"""models/transformer.py's `relu`: the FFN's ReLU is torch's when eager; compiled, its gradient is torch's
and the graph saves no bool mask for the backward (the slow kernel on the CPU)."""

from __future__ import annotations

from functools import partial

import torch
from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.decomposition import select_decomp_table

from tdiag.models.transformer import FeedForward, relu


def _saved_dtypes(module: torch.nn.Module, x: torch.Tensor) -> list[torch.dtype]:
    """The dtypes of what the compiled forward graph hands to the backward graph, split
    as TorchInductor splits it (its decompositions, its partitioner) but run without
    generating code: the forward graph's outputs after the module's own."""
    forward_outputs: list[torch.dtype] = []

    def forward_compiler(graph: torch.fx.GraphModule, example_inputs):
        (output,) = [n for n in graph.graph.nodes if n.op == "output"]
        forward_outputs.extend(a.meta["val"].dtype for a in output.args[0] if hasattr(a, "meta"))
        return make_boxed_func(graph.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda g, _: make_boxed_func(g.forward),
                           decompositions=select_decomp_table(),
                           partition_fn=partial(min_cut_rematerialization_partition, compiler="inductor"))
    torch._dynamo.reset()
    torch.compile(module, backend=backend)(x).sum().backward()
    return forward_outputs[1:]  # the first is the module's output


def test_the_compiled_feed_forward_saves_no_bool_mask_for_relus_backward():
    torch.manual_seed(0)
    ffn, x = FeedForward(8, 32, dropout=0.0), torch.randn(4, 5, 8)
    saved = _saved_dtypes(ffn, x)
    assert saved and torch.bool not in saved, saved


def test_torchs_relu_would_save_one():
    """Why `relu` is not simply torch.relu: the same block with torch.relu saves a bool mask (if a
    torch release stops doing so, `relu` can be torch's again)."""

    class TorchReLUFeedForward(FeedForward):
        def forward(self, x):
            return self.w_2(torch.relu(self.w_1(x)))

    torch.manual_seed(0)
    assert torch.bool in _saved_dtypes(TorchReLUFeedForward(8, 32, dropout=0.0), torch.randn(4, 5, 8))


def test_compiled_relu_gives_torchs_values_and_gradient():
    x = torch.randn(64, 32)
    x[0, :4] = 0.0  # ReLU's kink: torch passes no gradient at 0
    g = torch.randn(64, 32)
    ours = x.clone().requires_grad_()
    theirs = x.clone().requires_grad_()
    torch._dynamo.reset()
    out = torch.compile(relu, backend="aot_eager")(ours)
    out.backward(g)
    torch.relu(theirs).backward(g)
    assert torch.equal(out, torch.relu(x))
    assert torch.equal(ours.grad, theirs.grad)


def test_eager_relu_is_torchs_own_backward():
    y = relu(torch.randn(3, requires_grad=True))
    assert type(y.grad_fn).__name__ == "ReluBackward0"
