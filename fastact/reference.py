"""Plain-PyTorch reference math for every fastact op.

Used by the tests (evaluated in float64), by the double-backward formulas in `fastact.ops` and by the
homework plots. Everything here is differentiable torch code, nothing calls the compiled extension.

Parameter tensors (`beta` of swish, `weight` of prelu) hold one element or one value per channel, where
the channel is dim 1 of the input (as for `torch.nn.PReLU`).
"""
from __future__ import annotations

import math

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


# --- tails: where e^-|z| leaves the dtype's normal range -----------------------------------------------
# The derivatives carry e^-|z| as a factor (f' = e^z (1 + z) as z -> -inf) and stay normal numbers some way past
# where e^-|z| is subnormal and then 0 (|z| ~ 87 in float32, ~ 708 in float64), while the closed forms' sigmoid
# products flush there (torch's own derivatives give 0, or the wrong sign). In the tail they are evaluated as
# e^(C - |z|) times the other factors times e^-C: no factor underflows (or overflows) where the result is a
# normal number. (For float32 and float64 tensors: 16-bit ones are computed in float, as everywhere here.)
_C = 64.0
_EXP_MINUS_C = math.exp(-_C)


def _tail(z: Tensor) -> tuple[Tensor, Tensor]:
    """Where |z| is in the tail (from 80, float32, or 700, float64), and |z| clamped to the tail's range. Past
    its end (400, 3000) every tail term is 0 whatever its other factors (x^3 e^-|z| included); the clamp keeps
    the lanes a where() does not select finite, so that its gradient is not NaN."""
    lo, hi = (700.0, 3000.0) if z.dtype == torch.float64 else (80.0, 400.0)
    a = z.abs()
    return a > lo, a.clamp(lo, hi)


def _abs_pow_exp(x: Tensor, k: int, a: Tensor, times: Tensor | float = 1.0) -> Tensor:
    """|x|^k e^-a times `times` for a in the tail's range, as the product of k factors |x| e^((C - a)/k), with
    `times` and e^-C after the first: no intermediate overflows (|x|^k may) or underflows (e^-a does) where the
    result is normal."""
    u = x.abs() * torch.exp((_C - a) / k)
    r = u * times * _EXP_MINUS_C
    for _ in range(k - 1):
        r = r * u
    return torch.where(x.isinf(), 0.0, r)  # the limit: e^-|beta x| wins over any power of x


def _exp_minus(a: Tensor) -> Tensor:
    """e^-a for a in the tail's range, less the factor e^-C (multiplied in last, by the caller)."""
    return torch.exp(_C - a)


# --- Swish-beta: f(x) = x * sigmoid(beta x); beta = 1 is SiLU -------------------------------------
def swish(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    b = channel_view(beta, x)
    return x * torch.sigmoid(b * x)


def _swish_parts(x, beta):
    # z = beta x, 0 for beta = 0 also at x = +-inf or NaN (f = x / 2), where the product would be NaN; s (1 - s) as
    # sigmoid(z) sigmoid(-z): 1 - s would cancel to 0 for z > 37 even in float64
    b = channel_view(beta, x)
    z = b * torch.where((b == 0) & ~x.isfinite(), 0.0, x)
    s = torch.sigmoid(z)
    return b, z, s, s * torch.sigmoid(-z)


def swish_grad(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """df/dx = sigma(bx) + bx sigma(bx)(1 - sigma(bx)) (= beta f + sigma(bx)(1 - beta f)); e^z (1 + z) in the
    tail z -> -inf, and 1 + (z - 1) e^-z (1, with the tail of its derivative) as z -> +inf. Written so that
    autograd through it (a decomposition's double backward) keeps the digits of the second derivative too: s is
    1 - sigmoid(-z) for z >= 0, whose derivative does not cancel to 0 as sigmoid's s (1 - s) does."""
    _, z, _, p = _swish_parts(x, beta)
    s = torch.where(z >= 0, 1 - torch.sigmoid(-z), torch.sigmoid(z))
    in_tail, a = _tail(z)
    t = _exp_minus(a) * (1 - a) * _EXP_MINUS_C
    # (z zeroed in the tails, where p = 0 and z may be inf: no inf * 0 in the branch where() leaves out)
    return torch.where(in_tail, torch.where(z < 0, t, 1 - t), s + torch.where(in_tail, 0.0, z) * p)


def swish_grad_beta(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """df/dbeta = x^2 sigma(bx)(1 - sigma(bx)), elementwise (not yet reduced to beta's shape); x^2 e^-|bx| in
    the tails."""
    _, z, _, p = _swish_parts(x, beta)
    in_tail, a = _tail(z)
    return torch.where(in_tail, _abs_pow_exp(x, 2, a), x * (x * p))


def swish_grad2(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """d2f/dx2 = beta s(1-s) (2 + bx(1 - 2s)), with 1 - 2s = -tanh(bx/2) (no cancellation near 0); beta
    e^-|bx| (2 - |bx|) in the tails."""
    b, z, _, p = _swish_parts(x, beta)
    in_tail, a = _tail(z)
    tail = _exp_minus(a) * (2 - a) * b * _EXP_MINUS_C
    return torch.where(in_tail, tail, b * p * (2 - z * torch.tanh(z / 2)))


def swish_grad_x_beta(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """d2f/dx dbeta = x s(1-s) (2 + bx(1 - 2s)); x e^-|bx| (2 - |bx|) in the tails."""
    _, z, _, p = _swish_parts(x, beta)
    in_tail, a = _tail(z)
    tail = torch.sign(x) * _abs_pow_exp(x, 1, a, times=2 - a)
    return torch.where(in_tail, tail, (x * p) * (2 - z * torch.tanh(z / 2)))


def swish_grad2_beta(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """d2f/dbeta2 = x^3 s(1-s)(1-2s) = -x^3 s(1-s) tanh(bx/2); -sign(bx) x^3 e^-|bx| in the tails."""
    _, z, _, p = _swish_parts(x, beta)
    in_tail, a = _tail(z)
    # (x^2 e^-a from halves, whose exponents are exact, then |x|: e^((C - a)/3) would cost ~|a|/3 ulps)
    tail = -(torch.sign(z) * torch.sign(x)) * (_abs_pow_exp(x, 2, a) * x.abs())
    return torch.where(in_tail, tail, -(x * (x * (x * (p * torch.tanh(z / 2))))))


# --- Mish: f(x) = x tanh(softplus(x)) --------------------------------------------------------------
def mish(x: Tensor) -> Tensor:
    return x * torch.tanh(F.softplus(x))


def mish_delta(x: Tensor) -> Tensor:
    """Delta(x) = sech^2(softplus(x)), the 'preconditioner' of the Mish paper: 4 q^2 / (1 + q^2)^2 with
    q = e^-softplus(x) = sigmoid(-x), which keeps its digits for large x, where 1 - tanh^2 cancels to 0."""
    q2 = torch.sigmoid(-x).square()
    return 4 * q2 / (1 + q2).square()


def _mish_parts(x):
    # With r = e^-softplus(x) = sigmoid(-x): t = tanh(softplus(x)) is (1 - r^2) / (1 + r^2) for x >= 0, whose
    # derivative does not cancel to 0 past x ~ 9 as tanh's 1 - t^2 does, and sigmoid(x) (1 + r) / (1 + r^2) for
    # x < 0 (1 - r^2 = (1 - r)(1 + r) without the cancellation); sech^2(softplus(x)) = 4 r^2 / (1 + r^2)^2
    r, s = torch.sigmoid(-x), torch.sigmoid(x)
    r2 = r.square()
    inv = (1 + r2).reciprocal()
    return torch.where(x >= 0, 1 - r2, s * (1 + r)) * inv, s, 4 * r2 * inv.square()


def mish_grad(x: Tensor) -> Tensor:
    """f'(x) = tanh(sp(x)) + x sigma(x) sech^2(sp(x)) = Delta(x) swish(x) + f(x)/x; e^x (1 + x) in the tail
    x -> -inf, and 1 (1 + (4x - 2) e^-2x rounded) as x -> +inf."""
    t, s, d = _mish_parts(x)
    in_tail, a = _tail(x)
    # (x zeroed in the tails, where d = 0 and x may be inf: no inf * 0 in the branch where() leaves out)
    closed_form = t + torch.where(in_tail, 0.0, x) * s * d
    return torch.where(in_tail, torch.where(x < 0, _exp_minus(a) * (1 - a) * _EXP_MINUS_C, 1.0), closed_form)


def mish_grad2(x: Tensor) -> Tensor:
    """f''(x) = D s (2 + x(1 - s - 2 t s)) with t = tanh(sp), D = sech^2(sp), s = sigma(x); e^x (2 + x) in the
    tail x -> -inf, and 8 e^-2x (1 - x) in the tail x -> +inf (where D ~ 4 e^-2x leaves the normal range)."""
    t, s, d = _mish_parts(x)
    ds = d * s
    in_tail, a = _tail(x)
    in_right_tail, a2 = _tail(2 * x)
    closed_form = torch.where(ds == 0, 0.0, ds * (2 + x * (1 - s - 2 * t * s)))  # (x(...): inf where ds = 0)
    return torch.where(in_tail & (x < 0), _exp_minus(a) * (2 - a) * _EXP_MINUS_C,
                       torch.where(in_right_tail & (x > 0), _exp_minus(a2) * (1 - a2 / 2) * 8 * _EXP_MINUS_C,
                                   closed_form))


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
