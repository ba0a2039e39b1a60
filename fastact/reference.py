"""Plain-PyTorch reference math for every fastact op.

Used by the tests (evaluated in float64), by the double-backward formulas in `fastact.ops` and by the
homework plots. Everything here is differentiable torch code, nothing calls the compiled extension.

Parameter tensors (`beta` of swish, `weight` of prelu) hold one element or one value per channel, where
the channel is dim 1 of the input (as for `torch.nn.PReLU`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "channel_view", "reduce_to_param",
    "swish", "swish_grad", "swish_grad_beta", "swish_grad2", "swish_grad_x_beta", "swish_grad2_beta",
    "mish", "mish_grad", "mish_grad2", "mish_delta",
    "leaky_relu", "leaky_relu_grad", "prelu", "prelu_grad", "prelu_grad_weight",
]


def channel_view(param: Tensor | float, x: Tensor) -> Tensor | float:
    """Broadcast a one-element or per-channel (dim 1) parameter against `x`."""
    if not isinstance(param, Tensor):
        return param
    if param.numel() == 1:  # (as x.dim() ones rather than 0-d: DTensor shards through that reshape)
        return param.reshape([1] * x.dim())
    return param.reshape([1, -1] + [1] * (x.dim() - 2))


def reduce_to_param(t: Tensor, param: Tensor) -> Tensor:
    """Sum a tensor shaped like the input down to the shape of `param` (the adjoint of channel_view)."""
    if param.numel() == 1:
        return t.sum().reshape(param.shape).to(param.dtype)
    dims = [d for d in range(t.dim()) if d != 1]
    return t.sum(dims).reshape(param.shape).to(param.dtype)


# --- Swish-beta: f(x) = x * sigmoid(beta x); beta = 1 is SiLU -------------------------------------
def swish(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    b = channel_view(beta, x)
    return x * torch.sigmoid(b * x)


def _swish_parts(x, beta):
    # z = beta x, 0 for beta = 0 also at x = +-inf or NaN (f = x / 2, as the kernels take it), where the product
    # would be NaN; s (1 - s) as sigmoid(z) sigmoid(-z): 1 - s would cancel to 0 for z > 37 even in float64
    b = channel_view(beta, x)
    z = b * torch.where((b == 0) & ~x.isfinite(), 0.0, x)
    s = torch.sigmoid(z)
    return b, z, s, s * torch.sigmoid(-z)


def swish_grad(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """df/dx = sigma(bx) + bx sigma(bx)(1 - sigma(bx)) (= beta f + sigma(bx)(1 - beta f))."""
    _, z, s, p = _swish_parts(x, beta)
    return s + torch.where(p == 0, 0.0, z) * p  # (z may overflow where p = 0: no inf * 0 = NaN, nor in its gradient)


def swish_grad_beta(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """df/dbeta = x^2 sigma(bx)(1 - sigma(bx)), elementwise (not yet reduced to beta's shape). The powers of
    x are taken against s(1 - s), which vanishes for large |bx| before x^2 or x^3 overflow (inf * 0 = NaN)."""
    _, _, _, p = _swish_parts(x, beta)
    x = torch.where(p == 0, 0.0, x)  # (x = +-inf: the limit 0, not inf * 0)
    return x * (x * p)


def swish_grad2(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """d2f/dx2 = beta s(1-s) (2 + bx(1 - 2s))."""
    b, z, s, p = _swish_parts(x, beta)
    return torch.where(p == 0, 0.0, b * p * (2 + z * (1 - 2 * s)))


def swish_grad_x_beta(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """d2f/dx dbeta = x s(1-s) (2 + bx(1 - 2s))."""
    _, z, s, p = _swish_parts(x, beta)
    return torch.where(p == 0, 0.0, (x * p) * (2 + z * (1 - 2 * s)))


def swish_grad2_beta(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """d2f/dbeta2 = x^3 s(1-s)(1-2s), with 1 - 2s = -tanh(bx/2), which does not cancel for small bx."""
    _, z, _, p = _swish_parts(x, beta)
    x = torch.where(p == 0, 0.0, x)  # (x = +-inf: the limit 0, not inf * 0)
    return -(x * (x * (x * (p * torch.tanh(z / 2)))))


# --- Mish: f(x) = x tanh(softplus(x)) --------------------------------------------------------------
def mish(x: Tensor) -> Tensor:
    return x * torch.tanh(F.softplus(x))


def mish_delta(x: Tensor) -> Tensor:
    """Delta(x) = sech^2(softplus(x)), the 'preconditioner' of the Mish paper: 4 q^2 / (1 + q^2)^2 with
    q = e^-softplus(x) = sigmoid(-x), which keeps its digits for large x, where 1 - tanh^2 cancels to 0."""
    q2 = torch.sigmoid(-x).square()
    return 4 * q2 / (1 + q2).square()


def mish_grad(x: Tensor) -> Tensor:
    """f'(x) = tanh(sp(x)) + x sigma(x) sech^2(sp(x)) = Delta(x) swish(x) + f(x)/x."""
    t = torch.tanh(F.softplus(x))
    return t + x * torch.sigmoid(x) * (1 - t * t)


def mish_grad2(x: Tensor) -> Tensor:
    """f''(x) = D s (2 + x(1 - s - 2 t s)) with t = tanh(sp), D = 1 - t^2, s = sigma(x)."""
    t = torch.tanh(F.softplus(x))
    s = torch.sigmoid(x)
    ds = mish_delta(x) * s  # (1 - t^2 would lose every digit from x ~ 9 in float32)
    return torch.where(ds == 0, 0.0, ds * (2 + x * (1 - s - 2 * t * s)))  # (x(...) may overflow where ds = 0)


# --- Leaky family: f(x) = x for x > 0, alpha x otherwise (any real alpha) ----------------------------
def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return torch.where(x > 0, x, negative_slope * x)


def leaky_relu_grad(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """Derivative, with PyTorch's convention at 0 (the negative-side slope)."""
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, negative_slope))


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    w = channel_view(weight, x)
    return torch.where(x > 0, x, w * x)


def prelu_grad(x: Tensor, weight: Tensor) -> Tensor:
    w = channel_view(weight, x)
    return torch.where(x > 0, torch.ones_like(x), w * torch.ones_like(x))


def prelu_grad_weight(x: Tensor) -> Tensor:
    """df/dweight elementwise (not yet reduced): x where x <= 0, else 0."""
    return torch.where(x > 0, torch.zeros_like(x), x)
