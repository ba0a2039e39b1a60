"""What torch.compile traces for fastact's functions and modules: each activation as plain torch ops.

A call to fastact's kernel is opaque to inductor, which fuses pointwise ops into the kernel next to them (the
BatchNorm before an activation, the add after it): torch's own SiLU costs a compiled model no pass of its
own, while a kernel call, however fast, reads and writes the whole tensor once more. So under torch.compile
the functions in `fastact.functional` (and the modules, which call them) trace these forms instead, as vLLM's
custom ops fall back to their native forms under inductor, and the compiler generates the fused code (except
where the kernel measured faster: Mish on CPU). The
forms keep the kernels' semantics: 16-bit inputs computed in float32, a float32 parameter for 16-bit x, the
mathematical limits at +-inf (not inf * 0 = NaN), and the backward's closed forms, saving x and the
parameter only.

`set_compile_fusion(False)` (or FASTACT_COMPILE_FUSION=0) makes compiled code call fastact's kernels
instead; torch.export, torch.func transforms and direct `torch.ops.fastact` calls always keep the kernels.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from .reference import channel_view, reduce_to_param

__all__ = ["compile_fusion", "set_compile_fusion"]

_INF = float("inf")


def _fusion_from_env() -> bool:
    value = os.environ.get("FASTACT_COMPILE_FUSION", "1").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    if value not in ("", "1", "true", "on", "yes"):
        import warnings
        warnings.warn(f"fastact: FASTACT_COMPILE_FUSION={value!r} is not one of 0/false/off/no or 1/true/on/yes; "
                      "compile fusion stays on", stacklevel=2)
    return True


# Read by torch.compile while it traces, so it guards on the value: switching recompiles.
_fusion = _fusion_from_env()


def compile_fusion() -> bool:
    """Whether torch.compile traces fastact's functions and modules as plain torch ops that it fuses (default),
    rather than as calls to fastact's kernels."""
    return _fusion


def set_compile_fusion(enabled: bool) -> bool:
    """Turn compile fusion on or off for what is compiled next; returns the previous setting."""
    global _fusion
    if type(enabled).__name__ in ("bool_", "bool") and type(enabled).__module__ == "numpy":
        enabled = bool(enabled)
    if not isinstance(enabled, bool):
        raise TypeError(f"fastact.set_compile_fusion: enabled must be True or False, got {type(enabled).__name__}")
    previous, _fusion = _fusion, enabled
    return previous


# Where fastact's kernel stays under torch.compile, fusion or not: Mish on CPU, whose kernel computes its exp
# faster than inductor's vectorized code (one 2^22 float32 tensor on this project's 2-core AVX-512 host: kernel
# 1.5 ms, inductor's code for the same form 2.8 ms, torch's own compiled mish 18.7 ms), by more than the pass
# that fusion saves; in Conv-BN-Mish models the kernel was 1.2x faster compiled than the fused form.
_KERNEL_UNDER_COMPILE = {("mish", "cpu")}


def fuses(name: str, x: Tensor) -> bool:
    """Whether this call of op `name` on x is being traced by torch.compile for a graph that should hold the
    plain forms."""
    return (_fusion and torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and not torch._C._are_functorch_transforms_active()
            and (name, x.device.type) not in _KERNEL_UNDER_COMPILE)


def _compute(t: Tensor) -> Tensor:
    """16-bit tensors in float32, as the kernels compute them."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _signed_zero_like(x: Tensor) -> Tensor:
    return torch.where(x < 0, -0.0, 0.0).to(x.dtype)


# --- forwards: (x in compute type, parameter) -> f ------------------------------------------------------------
def _swish(x: Tensor, beta) -> Tensor:
    # f = x / (1 + e^-z), z = beta x: one division, as the kernels' (and inductor's own SiLU) form, where
    # x * sigmoid(z) is a division and a product
    if isinstance(beta, Tensor):
        b = channel_view(beta, x)
        z = b * torch.where((b == 0) & ~x.isfinite(), 0.0, x)  # beta = 0: f = x / 2, also at +-inf
        # z = -inf: the limit 0 with x's sign, not inf / inf
        return torch.where(z == -_INF, _signed_zero_like(x), x / (1 + torch.exp(-z)))
    if beta == 0:
        return x * 0.5
    # A fixed beta's sign says which infinite x meets z = -inf (the limit 0, with x's sign): that x is clamped to
    # the largest finite value, so that the quotient is that 0 rather than inf / inf. One max per element,
    # where a select on z == -inf took two comparisons and two blends (1.3x the time of torch's compiled SiLU).
    big = torch.finfo(x.dtype).max
    z = x if beta == 1 else beta * x
    return (x.clamp(min=-big) if beta > 0 else x.clamp(max=big)) / (1 + torch.exp(-z))


def _mish(x: Tensor, _=None) -> Tensor:
    # tanh(softplus(x)) from one e = exp(-|x|), free of overflow and cancellation (csrc/activations.h, MishOp)
    e = torch.exp(-x.abs())
    e2 = e * e
    negative = x < 0
    num = torch.where(negative, e2, 1.0) + 2 * e
    den = num + torch.where(negative, 2.0, 2 * e2)
    return torch.where(x == -_INF, -0.0, x * (num / den))


def _leaky(x: Tensor, slope) -> Tensor:
    if isinstance(slope, Tensor):
        w = channel_view(slope, x)
        negative = torch.where((w == 0) & (x == -_INF), -w, w * x)  # slope +-0 at -inf: the limit -slope
    elif slope == 0:
        negative = torch.where(x == -_INF, -slope, slope * x)
    else:
        negative = slope * x
    return torch.where(x > 0, x, negative)


# --- backwards: (grad, x in compute type, parameter) -> (grad_input, elementwise grad_param or None) -----------
def _swish_backward(g: Tensor, x: Tensor, beta):
    if isinstance(beta, Tensor):
        b = channel_view(beta, x)
        z = b * torch.where((b == 0) & ~x.isfinite(), 0.0, x)
    else:
        z = beta * x if beta != 0 else torch.zeros_like(x)
    e = torch.exp(-z.abs())
    q = e / (1 + e)  # sigmoid(-|z|) <= 1/2: 1 - q is exact
    s = torch.where(z < 0, q, 1 - q)
    ds = q * (1 - q)
    z_inf = z.abs() == _INF  # z s (1 - s) and x^2 s (1 - s) are inf * 0 there; their limit is 0
    grad_input = torch.where(z_inf, g * s, g * (s + z * ds))
    grad_beta = torch.where(z_inf, g * 0.0, g * (x * (x * ds)))
    return grad_input, grad_beta


def _mish_backward(g: Tensor, x: Tensor, _=None):
    e = torch.exp(-x.abs())
    e2 = e * e
    negative = x < 0
    m = torch.where(negative, e2 + 2 * e, 2 * e2)
    den = torch.where(negative, e2 + 2 * e + 2, 1 + 2 * e + 2 * e2)
    inv_den = 1 / den
    term = torch.where(negative, m * inv_den, 1 - m * inv_den)  # tanh(softplus(x))
    tail = 4 * e * x * (1 + e) * torch.where(negative, 1.0, e) * (inv_den * inv_den)  # 4e first: no inf * 0
    return torch.where(x.abs() == _INF, g * term, g * (term + tail)), None


def _leaky_backward(g: Tensor, x: Tensor, slope):
    positive = x > 0
    if isinstance(slope, Tensor):
        grad_input = torch.where(positive, g, g * channel_view(slope, x))
        return grad_input, torch.where(positive, 0.0, g * x)  # selected after the product, as the kernels
    return torch.where(positive, g, g * slope), None


# op name -> (forward, backward); the names of torch.ops.fastact
_FORMS = {
    "swish": (_swish, _swish_backward),
    "swish_param": (_swish, _swish_backward),
    "mish": (_mish, _mish_backward),
    "leaky_relu": (_leaky, _leaky_backward),
    "prelu": (_leaky, _leaky_backward),
}


def forward(name: str, x: Tensor, *param) -> Tensor:
    """The op's value as plain torch ops (no autograd of its own)."""
    p = _compute(param[0]) if param and isinstance(param[0], Tensor) else (param[0] if param else None)
    return _FORMS[name][0](_compute(x), p).to(x.dtype)


def backward(name: str, grad: Tensor, x: Tensor, *param):
    """<op>_backward as plain torch ops: grad_input, and for a tensor parameter its gradient too."""
    p = param[0] if param else None
    tensor_param = isinstance(p, Tensor)
    grad_input, grad_param = _FORMS[name][1](_compute(grad), _compute(x), _compute(p) if tensor_param else p)
    grad_input = grad_input.to(x.dtype)
    if not tensor_param:
        return grad_input
    return grad_input, reduce_to_param(grad_param, p)


class _Fused(torch.autograd.Function):
    """fastact.<name>(x, *param) as plain torch ops, with the kernels' backward (saving x and the parameter).
    (torch.compile traces a Function's backward as differentiable once: with backend="eager" a gradient taken
    with create_graph=True comes back without a graph; aot_eager and inductor refuse double backward.)"""

    @staticmethod
    def forward(ctx, name: str, x: Tensor, *param) -> Tensor:
        ctx.name = name
        tensor_param = bool(param) and isinstance(param[0], Tensor)
        ctx.scalar = None if tensor_param else param
        ctx.save_for_backward(x, *(param if tensor_param else ()))
        return forward(name, x, *param)

    @staticmethod
    def backward(ctx, grad):
        x, *tensor_param = ctx.saved_tensors
        if tensor_param:
            grad_input, grad_param = backward(ctx.name, grad, x, *tensor_param)
            return None, grad_input, grad_param
        return (None, backward(ctx.name, grad, x, *ctx.scalar)) + (None,) * len(ctx.scalar)


def call(name: str, x: Tensor, *param) -> Tensor:
    """fastact.<name> for torch.compile to fuse: differentiable plain torch ops, after the op's own checks."""
    check(name, x, *param)
    return _Fused.apply(name, x, *param)


def check(name: str, x: Tensor, *param) -> None:
    """The op's argument checks (fastact/ops.py), which its kernel would make."""
    from .ops import CHECKS  # (ops imports the extension, which this module does not need)
    CHECKS[name](x, param)
