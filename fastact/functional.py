"""Functions mirroring torch.nn.functional (silu, mish, leaky_relu, prelu) plus swish with a float or
tensor beta. All are differentiable (twice), traceable by torch.compile, and run fastact's kernels."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["swish", "silu", "mish", "leaky_relu", "prelu"]

_ops = torch.ops.fastact


def _maybe_inplace(op, x: Tensor, *args) -> Tensor:
    """Writes into x when no gradient flows through it. Under autograd the op runs out of place instead:
    its backward reads the input, which an in-place write would destroy (torch's in-place variants save a
    copy of it, which saves no memory either). Callers use the returned tensor in both cases, as with torch."""
    if torch.is_grad_enabled() and x.requires_grad:
        return op.default(x, *args)
    op.out(x, *args, out=x)
    # Tell autograd x changed, so a graph that saved x for backward raises instead of using the new values.
    torch.autograd.graph.increment_version(x)
    return x


def swish(x: Tensor, beta: float | Tensor = 1.0) -> Tensor:
    """x * sigmoid(beta * x). beta: a float, or a tensor of one element or one per channel (dim 1)."""
    if isinstance(beta, Tensor):
        return _ops.swish_param.default(x, beta)
    return _ops.swish.default(x, float(beta))


def silu(x: Tensor, inplace: bool = False) -> Tensor:
    """x * sigmoid(x), like torch.nn.functional.silu."""
    if inplace:
        return _maybe_inplace(_ops.swish, x, 1.0)
    return _ops.swish.default(x, 1.0)


def mish(x: Tensor, inplace: bool = False) -> Tensor:
    """x * tanh(softplus(x)), like torch.nn.functional.mish."""
    if inplace:
        return _maybe_inplace(_ops.mish, x)
    return _ops.mish.default(x)


def leaky_relu(x: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x for x > 0, negative_slope * x otherwise, for any real slope (1: identity, 0: ReLU, -1: |x|)."""
    if inplace:
        return _maybe_inplace(_ops.leaky_relu, x, float(negative_slope))
    return _ops.leaky_relu.default(x, float(negative_slope))


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    """Like torch.nn.functional.prelu: weight has one element or one per channel (dim 1)."""
    return _ops.prelu.default(x, weight)
