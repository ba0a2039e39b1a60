"""torch.library registrations for the ops defined in C++ (csrc/registration.cpp): fake kernels, so that
torch.compile can trace them, and the autograd of the backward ops, so that every op is differentiable twice
(and beyond).

First derivatives are registered in C++ (csrc/autograd.h: a per-call cost like torch's own ops) and run
fastact's fused backward kernels, saving only the input and the parameter. The backward of a backward is
written here in plain torch ops from the closed-form derivatives in `fastact.reference`, so it is itself
differentiable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import reference as ref

__all__ = ["cpu_capability", "set_cpu_capability", "supported_cpu_capabilities", "cpu_huge_pages",
           "set_cpu_huge_pages", "cpu_streaming_threshold", "set_cpu_streaming_threshold",
           "has_cuda_kernels"]

_lib = torch.ops.fastact


def cpu_capability() -> str:
    """The CPU kernel build in use: 'default', 'avx2' or 'avx512' (widest this CPU runs, unless capped by
    FASTACT_CPU_CAPABILITY or ATEN_CPU_CAPABILITY)."""
    return _lib.cpu_capability()


def set_cpu_capability(name: str) -> str:
    """Switch the CPU kernel build (for testing and benchmarking); returns the previous one."""
    return _lib.set_cpu_capability(name)


def supported_cpu_capabilities() -> list[str]:
    return list(_lib.supported_cpu_capabilities())


def cpu_huge_pages() -> bool:
    """Whether fastact backs its large CPU outputs (32 MiB and more) with transparent huge pages. On by default
    where the system hands them out on request (/sys/kernel/mm/transparent_hugepage/enabled is 'madvise');
    off with FASTACT_HUGE_PAGES=0, or when PyTorch's own THP_MEM_ALLOC_ENABLE=1 already does it. It cuts the
    page faults of writing a fresh output (one per 2 MB instead of one per 4 KB); results are unchanged."""
    return bool(_lib.cpu_huge_pages())


def set_cpu_huge_pages(enabled: bool) -> bool:
    """Turn huge pages for large CPU outputs on or off; returns the previous setting. Turning them on where
    the system does not hand them out on request leaves them off."""
    return bool(_lib.set_cpu_huge_pages(bool(enabled)))


def cpu_streaming_threshold() -> int:
    """CPU calls that touch more bytes than this (inputs and output; default: the last-level cache) write
    their output with non-temporal stores, which skip reading each cache line before overwriting it."""
    return int(_lib.cpu_streaming_threshold())


def set_cpu_streaming_threshold(nbytes: int) -> int:
    """Set the streaming threshold in bytes (0: always stream); returns the previous one."""
    return int(_lib.set_cpu_streaming_threshold(int(nbytes)))


def has_cuda_kernels() -> bool:
    return bool(_lib.has_cuda_kernels())


@dataclass(frozen=True)
class _Derivatives:
    """Closed forms f_x, f_xx and, for a tensor parameter p, f_p, f_xp, f_pp (elementwise, unreduced)."""
    f_x: Callable
    f_xx: Callable
    f_p: Callable | None = None
    f_xp: Callable | None = None
    f_pp: Callable | None = None


def _zero(x, p=None):
    return torch.zeros_like(x)


_SWISH = _Derivatives(ref.swish_grad, ref.swish_grad2, ref.swish_grad_beta, ref.swish_grad_x_beta,
                      ref.swish_grad2_beta)
_PRELU = _Derivatives(
    ref.prelu_grad, _zero,
    lambda x, w: ref.prelu_grad_weight(x),
    lambda x, w: torch.where(x > 0, torch.zeros_like(x), torch.ones_like(x)),
    _zero,
)

# name -> (kind of parameter, derivatives); mirrors FASTACT_FOR_EACH_ACTIVATION in csrc/ops.h.
_OPS = {
    "swish": ("scalar", _SWISH),
    "swish_param": ("tensor", _SWISH),
    "mish": ("none", _Derivatives(lambda x, p=None: ref.mish_grad(x), lambda x, p=None: ref.mish_grad2(x))),
    "leaky_relu": ("scalar", _Derivatives(ref.leaky_relu_grad, _zero)),
    "prelu": ("tensor", _PRELU),
}


def _register(name: str, kind: str, d: _Derivatives) -> None:
    qualname = f"fastact::{name}"
    backward_op = getattr(_lib, f"{name}_backward").default
    has_tensor_param = kind == "tensor"

    # --- fake kernels: outputs take the input's layout (empty_like), as the C++ kernels do -------------
    torch.library.register_fake(qualname)(lambda x, *param: torch.empty_like(x))
    torch.library.register_fake(f"{qualname}.out")(lambda x, *param, out: out)
    if has_tensor_param:
        torch.library.register_fake(f"{qualname}_backward")(
            lambda grad, x, p: (torch.empty_like(x), torch.empty_like(p, memory_format=torch.contiguous_format)))
        torch.library.register_fake(f"{qualname}_backward.out")(
            lambda grad, x, p, *, grad_input, **grad_param: (grad_input, *grad_param.values()))
    else:
        torch.library.register_fake(f"{qualname}_backward")(lambda grad, x, *param: torch.empty_like(x))
        torch.library.register_fake(f"{qualname}_backward.out")(lambda grad, x, *param, grad_input: grad_input)

    # --- second derivative: the backward of the backward, in differentiable torch ops ------------------
    def setup_backward(ctx, inputs, output):
        grad, x, *param = inputs
        if has_tensor_param:
            ctx.save_for_backward(grad, x, param[0])
        else:
            ctx.save_for_backward(grad, x)
            ctx.param = param

    def backward_backward(ctx, gg_input, gg_param=None):
        if has_tensor_param:
            grad, x, p = ctx.saved_tensors
        else:
            grad, x = ctx.saved_tensors
            p = ctx.param[0] if ctx.param else None
        if gg_input is None:
            gg_input = torch.zeros_like(x)
        d_grad = gg_input * d.f_x(x, p)
        d_x = gg_input * grad * d.f_xx(x, p)
        d_param = None
        if has_tensor_param:
            f_xp = d.f_xp(x, p)
            d_param = ref.reduce_to_param(gg_input * grad * f_xp, p)
            if gg_param is not None:
                gg_p = ref.channel_view(gg_param, x)
                d_grad = d_grad + gg_p * d.f_p(x, p)
                d_x = d_x + gg_p * grad * f_xp
                d_param = d_param + ref.reduce_to_param(gg_p * grad * d.f_pp(x, p), p)
            return d_grad.to(grad.dtype), d_x.to(x.dtype), d_param
        return (d_grad.to(grad.dtype), d_x.to(x.dtype), *([None] * len(ctx.param)))

    torch.library.register_autograd(f"{qualname}_backward", backward_backward, setup_context=setup_backward)


for _name, (_kind, _derivatives) in _OPS.items():
    _register(_name, _kind, _derivatives)
