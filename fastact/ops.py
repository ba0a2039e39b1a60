"""torch.library registrations for the ops defined in C++ (csrc/registration.cpp): fake kernels, so that
torch.compile can trace them; the autograd of the backward ops, so that every op is differentiable twice (and
beyond, in reverse and forward mode); and vmap batching rules.

First derivatives are registered in C++ (csrc/autograd.h: a per-call cost like torch's own ops) and run
fastact's fused backward kernels, saving only the input and the parameter (LeakyReLU saves one bit per element
instead, in plain eager calls on contiguous CPU tensors, and its backward is fastact::leaky_relu_mask_backward;
an in-place LeakyReLU saves its output, as torch's leaky_relu_). The backward of a backward, and its
forward-mode derivative, are written here in plain torch ops from the closed-form derivatives in
`fastact.reference`, so they are themselves differentiable.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import math
import operator
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch._decomp
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from torch import Tensor

from . import reference as ref

__all__ = ["cpu_capability", "set_cpu_capability", "supported_cpu_capabilities", "cpu_huge_pages",
           "set_cpu_huge_pages", "cpu_streaming_threshold", "set_cpu_streaming_threshold",
           "cpu_lookup_threshold", "set_cpu_lookup_threshold", "cpu_lookup_tables_cached", "cpu_table_gathers",
           "set_cpu_table_gathers", "has_cuda_kernels",
           "leaky_relu_saves_mask", "set_leaky_relu_saves_mask"]

_lib = torch.ops.fastact


def cpu_capability() -> str:
    """The CPU kernel build in use: 'default', 'avx2', 'avx512' or 'avx512_bf16' (widest this CPU runs, unless
    capped by FASTACT_CPU_CAPABILITY or ATEN_CPU_CAPABILITY)."""
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
    if type(enabled).__name__ in ("bool_", "bool") and type(enabled).__module__ == "numpy":
        enabled = bool(enabled)  # numpy's bool
    if not isinstance(enabled, bool):  # bool("no") is True: a string must not turn them on
        raise TypeError(f"fastact.set_cpu_huge_pages: enabled must be True or False, got {type(enabled).__name__}")
    return bool(_lib.set_cpu_huge_pages(enabled))


_INT64_MAX = 2**63 - 1


def _threshold(fn: str, arg: str, value) -> int:
    """A threshold argument as the C++ side takes it (int64): an int, huge ones and math.inf saturated (they
    mean "never")."""
    if value == math.inf and isinstance(value, float):
        return _INT64_MAX
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints, numpy integers; not floats
    except TypeError:
        raise TypeError(f"fastact.ops.{fn}: {arg} must be a non-negative int (or math.inf), "
                        f"got {type(value).__name__}") from None
    return max(min(value, _INT64_MAX), -1)  # a negative value is refused by the C++ side, with its message


def cpu_streaming_threshold() -> int:
    """CPU calls that touch more bytes than this (inputs and output; default: a quarter of the last-level
    cache, a program's assumed share of a shared one) write their output with non-temporal stores, which skip
    reading each cache line before overwriting it."""
    return int(_lib.cpu_streaming_threshold())


def set_cpu_streaming_threshold(nbytes: int) -> int:
    """Set the streaming threshold in bytes (0: always stream); returns the previous one."""
    return int(_lib.set_cpu_streaming_threshold(_threshold("set_cpu_streaming_threshold", "nbytes", nbytes)))


def cpu_lookup_threshold() -> int:
    """bfloat16/float16 swish and mish on CPU with one parameter value (a float, or a one-element tensor,
    learnable or not) and at least this many elements (default 2^18; 4x that where the table must be built
    first) read f, f', or f' with df/dbeta (a learnable beta's backward) from a table of all 65536 inputs built
    with the kernel itself (same bits), in the AVX2 and AVX-512 kernel builds."""
    return int(_lib.cpu_lookup_threshold())


def set_cpu_lookup_threshold(numel: int) -> int:
    """Set the lookup-table threshold in elements (0: always, for tests; math.inf or any value past 2^63 - 1:
    never); returns the previous one."""
    return int(_lib.set_cpu_lookup_threshold(_threshold("set_cpu_lookup_threshold", "numel", numel)))


def cpu_lookup_tables_cached() -> int:
    """How many lookup tables are kept (the last 8 (op, dtype, parameter, direction) used)."""
    return int(_lib.cpu_lookup_tables_cached())


def cpu_table_gathers() -> bool:
    """Whether the AVX-512 kernel builds read those tables with gathers (else with scalar loads, as the AVX2
    build does). Decided by timing both ways once per process, with plain and with streaming stores: the GDS
    ("Downfall") microcode mitigation makes gathers slower on the Xeons it covers (Skylake to Ice Lake), which
    a VM may not report, and many times slower after streaming stores. Gathers are kept only where they win
    both. False where the CPU has no AVX-512. The results are the same bits either way."""
    return bool(_lib.cpu_table_gathers())


def set_cpu_table_gathers(enabled: bool) -> bool:
    """Set how the AVX-512 builds read the tables (for tests and benchmarks); returns the previous setting."""
    if not isinstance(enabled, bool):
        raise TypeError("fastact.ops.set_cpu_table_gathers: enabled must be True or False, "
                        f"got {type(enabled).__name__}")
    return bool(_lib.set_cpu_table_gathers(enabled))


def has_cuda_kernels() -> bool:
    return bool(_lib.has_cuda_kernels())


@dataclass(frozen=True)
class _Derivatives:
    """Closed forms f_x, f_xx and, for a tensor parameter p, f_p, f_xp, f_pp (elementwise, unreduced);
    grad_p(grad, x, p) is grad * f_p where the product needs another order (default: grad * f_p)."""
    f_x: Callable
    f_xx: Callable
    f_p: Callable | None = None
    f_xp: Callable | None = None
    f_pp: Callable | None = None
    grad_p: Callable | None = None


def _zero(x, p=None):
    return torch.zeros_like(x)


_SWISH = _Derivatives(ref.swish_grad, ref.swish_grad2, ref.swish_grad_beta, ref.swish_grad_x_beta,
                      ref.swish_grad2_beta)
_PRELU = _Derivatives(
    ref.prelu_grad, _zero,
    lambda x, w: ref.prelu_grad_weight(x),
    lambda x, w: torch.where(x > 0, torch.zeros_like(x), torch.ones_like(x)),
    _zero,
    # selected after the product, as torch's formula and the kernels: 0 where x > 0 also for an inf or NaN grad
    lambda grad, x, w: torch.where(x > 0, torch.zeros_like(x), grad * x),
)

_PARAM_NAMES = {"swish": "beta", "swish_param": "beta", "leaky_relu": "negative_slope", "prelu": "weight"}

# name -> (kind of parameter, derivatives); mirrors FASTACT_FOR_EACH_ACTIVATION in csrc/ops.h.
_OPS = {
    "swish": ("scalar", _SWISH),
    "swish_param": ("tensor", _SWISH),
    "mish": ("none", _Derivatives(lambda x, p=None: ref.mish_grad(x), lambda x, p=None: ref.mish_grad2(x))),
    "leaky_relu": ("scalar", _Derivatives(ref.leaky_relu_grad, _zero)),
    "prelu": ("tensor", _PRELU),
}


_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _c10_dtype(dtype: torch.dtype) -> str:
    """A dtype as the C++ checks print it (c10's ScalarType names: Float, BFloat16, ...)."""
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
            torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
            torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
            }.get(dtype, str(dtype).removeprefix("torch."))


# op name -> its argument checks, check(x, param): also run where torch.compile traces the op's plain form
# (fastact/compiled.py), which would otherwise broadcast a wrong parameter or compute on an integer x.
CHECKS: dict[str, Callable] = {}


def _register(name: str, kind: str, d: _Derivatives) -> None:
    qualname = f"fastact::{name}"
    backward_op = getattr(_lib, f"{name}_backward").default
    has_tensor_param = kind == "tensor"

    # --- fake kernels: outputs take the input's layout (empty_like), as the C++ kernels do -------------
    # They are also the Meta kernels, which the dispatcher picks when any argument is on the meta device: the
    # checks keep a CPU x with a parameter left on meta from returning uninitialised memory.
    param_name = _PARAM_NAMES.get(name)

    # The C++ argument checks (csrc/ops.cpp) that metadata decides, so that tracing refuses what the kernels would.
    def check(x, param, **others):
        if x.dtype not in _KERNEL_DTYPES:
            raise RuntimeError(f"fastact.{name}: x must be a floating-point tensor (float32, float64, float16 or "
                               f"bfloat16), got {_c10_dtype(x.dtype)}")
        for arg, t in others.items():
            if t.shape != x.shape:
                raise RuntimeError(f"fastact.{name}: {arg} must have the shape of x {list(x.shape)}, got "
                                   f"{list(t.shape)}")
            if t.dtype != x.dtype:
                raise RuntimeError(f"fastact.{name}: {arg} must have the dtype of x ({_c10_dtype(x.dtype)}), got "
                                   f"{_c10_dtype(t.dtype)}")
        for arg, t in [*others.items(), *([(param_name, param[0])] if has_tensor_param else [])]:
            if t.device != x.device:
                raise RuntimeError(f"fastact.{name}: {arg} must be on the device of x ({x.device}), got {t.device}")
        # as torch's scalar arguments: a finite value that float cannot hold is an error (a symbolic one is left
        # to the kernel, so as not to specialize it)
        if kind == "scalar" and isinstance(param[0], (int, float)):
            v = float(param[0])
            # (comparisons rather than math.isfinite: torch.compile traces them on a symbolic float, where the
            # plain form of the op runs this check)
            if x.dtype != torch.float64 and math.inf > abs(v) > torch.finfo(torch.float32).max:
                raise RuntimeError(f"fastact.{name}: {param_name} = {v} cannot be converted to float (the compute "
                                   f"type of {_c10_dtype(x.dtype)} x) without overflow")
        if not has_tensor_param:
            return
        p = param[0]
        if p.dtype != x.dtype and not (p.dtype == torch.float32 and x.dtype != torch.float64):
            raise RuntimeError(f"fastact.{name}: {param_name} must have the dtype of x ({_c10_dtype(x.dtype)}) or "
                               f"float32 when x is float16/bfloat16, got {_c10_dtype(p.dtype)}")
        if p.dim() > 1:
            raise RuntimeError(f"fastact.{name}: {param_name} must be 0-d or 1-d (one element, or one per channel), "
                               f"got shape {list(p.shape)}")
        if p.numel() != 1 and x.dim() < 2:
            raise RuntimeError(f"fastact.{name}: a per-channel {param_name} ({p.numel()} elements) needs x with a "
                               f"channel dimension (dim 1), got x of shape {list(x.shape)}")
        if p.numel() != 1 and p.numel() != x.shape[1]:
            raise RuntimeError(f"fastact.{name}: {param_name} must have 1 element or one per channel (x.size(1) = "
                               f"{x.shape[1]}), got shape {list(p.shape)}")

    def check_grad_param(p, grad_param: dict):
        for arg, t in grad_param.items():  # (the kernel's check of the parameter gradient's output)
            if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                raise RuntimeError(
                    f"fastact.{name}: {arg} must have the shape, dtype and device of {param_name} ({list(p.shape)}, "
                    f"{_c10_dtype(p.dtype)}, {p.device}), got ({list(t.shape)}, {_c10_dtype(t.dtype)}, {t.device})")

    def fake_backward_out(grad, x, p, *, grad_input, **grad_param):
        check(x, (p,), grad=grad, grad_input=grad_input)
        check_grad_param(p, grad_param)
        return (grad_input, *grad_param.values())

    def fake_forward(x, *param):
        check(x, param)
        return torch.empty_like(x)

    def fake_backward(grad, x, *param):
        check(x, param, grad=grad)
        if has_tensor_param:
            return torch.empty_like(x), torch.empty_like(param[0], memory_format=torch.contiguous_format)
        return torch.empty_like(x)

    CHECKS[name] = check
    torch.library.register_fake(qualname)(fake_forward)
    torch.library.register_fake(f"{qualname}.out")(lambda x, *param, out: (check(x, param, out=out), out)[1])
    torch.library.register_fake(f"{qualname}_backward")(fake_backward)
    if has_tensor_param:
        torch.library.register_fake(f"{qualname}_backward.out")(fake_backward_out)
    else:
        torch.library.register_fake(f"{qualname}_backward.out")(
            lambda grad, x, *param, grad_input: (check(x, param, grad=grad, grad_input=grad_input), grad_input)[1])

    # --- autograd of the backward op: the second derivatives, in differentiable torch ops ----------------
    # A torch.autograd.Function at the Autograd key (rather than torch.library.register_autograd) so that it
    # also has a forward-mode derivative (jvp): forward-over-reverse (torch.autograd.forward_ad over a
    # backward, gradgradcheck's check_fwd_over_rev) differentiates this op forward. Inside torch.func
    # transforms the C++ layer computes derivatives with torch ops instead and never calls this op.
    def tangent_view(t, x):
        return None if t is None else ref.channel_view(t, x)

    class BackwardOfActivation(torch.autograd.Function):
        @staticmethod
        def forward(grad, x, *param):
            with torch._C._AutoDispatchBelowAutograd():
                return backward_op(grad, x, *param)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad, x, *param = inputs
            ctx.set_materialize_grads(False)  # an unused output's gradient stays None, its terms skipped
            if has_tensor_param:
                ctx.save_for_backward(grad, x, param[0])
                ctx.save_for_forward(grad, x, param[0])
            else:
                ctx.save_for_backward(grad, x)
                ctx.save_for_forward(grad, x)
                ctx.param = param

        @staticmethod
        def backward(ctx, gg_input, gg_param=None):
            out_dtypes = [t.dtype for t in ctx.saved_tensors[:2]]
            grad, x_saved, p = _saved(ctx, ctx.saved_tensors)
            d_grad = _times_f_x(ctx, gg_input, x_saved, p)
            grad, x = _opmath(grad, x_saved)
            gg_input = torch.zeros_like(x) if gg_input is None else _opmath(gg_input)[0]
            d_x = gg_input * grad * d.f_xx(x, p)
            if has_tensor_param:
                f_xp = d.f_xp(x, p)
                d_param = ref.reduce_to_param(gg_input * grad * f_xp, p)
                if gg_param is not None:
                    gg_p = ref.channel_view(gg_param, x)
                    d_grad = d_grad + gg_p * d.f_p(x, p)
                    d_x = d_x + gg_p * grad * f_xp
                    d_param = d_param + ref.reduce_to_param(gg_p * grad * d.f_pp(x, p), p)
                return d_grad.to(out_dtypes[0]), d_x.to(out_dtypes[1]), d_param
            return (d_grad.to(out_dtypes[0]), d_x.to(out_dtypes[1]), *([None] * len(ctx.param)))

        @staticmethod
        def jvp(ctx, t_grad, t_x, *t_param):
            # d(g f_x) = t_g f_x + g f_xx t_x + g f_xp t_p, and for a tensor parameter
            # d reduce(g f_p) = reduce(t_g f_p + g f_xp t_x + g f_pp t_p).
            out_dtype = ctx.saved_tensors[0].dtype
            grad, x_saved, p = _saved(ctx, ctx.saved_tensors)
            t_grad_f_x = None if t_grad is None else _times_f_x(ctx, t_grad, x_saved, p)
            grad, x = _opmath(grad, x_saved)
            t_x = None if t_x is None else _opmath(t_x)[0]
            t_p = tangent_view(t_param[0], x) if has_tensor_param and t_param else None
            def sum_of(*terms):  # sum of tangent * factor over the tangents that are present
                total = torch.zeros_like(x, dtype=torch.promote_types(x.dtype, grad.dtype))
                for tangent, factor in terms:
                    if tangent is not None:
                        total = total + tangent * factor()
                return total

            t_input = sum_of((t_x, lambda: grad * d.f_xx(x, p)), (t_p, lambda: grad * d.f_xp(x, p)))
            if t_grad_f_x is not None:
                t_input = t_input + t_grad_f_x
            if not has_tensor_param:
                return t_input.to(out_dtype)
            t_grad = None if t_grad is None else _opmath(t_grad)[0]
            t_elem = sum_of((t_grad, lambda: d.f_p(x, p)), (t_x, lambda: grad * d.f_xp(x, p)),
                            (t_p, lambda: grad * d.f_pp(x, p)))
            return t_input.to(out_dtype), ref.reduce_to_param(t_elem, p)

    def _times_f_x(ctx, t, x, p):
        """t f'(x), where t is d(grad)'s incoming gradient or tangent: the fused backward itself, in one pass
        (under create_graph this op again, so differentiable), rather than f''s closed form in torch ops."""
        if t is None:
            return torch.zeros_like(x)
        out = backward_op(t.to(x.dtype), x, *((p,) if has_tensor_param else ctx.param))
        return out[0] if has_tensor_param else out

    def _opmath(*tensors):
        # The second derivatives of 16-bit inputs in float, as the kernels compute the first ones: the closed
        # forms' intermediates (x^3 in d2f/dbeta2) would overflow float16.
        return tuple(t.float() if isinstance(t, Tensor) and t.dtype in (torch.float16, torch.bfloat16) else t
                     for t in tensors)

    def _saved(ctx, tensors):
        if has_tensor_param:
            return tensors
        grad, x = tensors
        return grad, x, (ctx.param[0] if ctx.param else None)

    def autograd_kernel(grad, x, *param):
        tensors = (grad, x, *param) if has_tensor_param else (grad, x)
        for arg, t in zip(("grad", "x", param_name), tensors):  # (read below before the kernel's checks run)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"fastact.{name}: {arg} must be a tensor, got {type(t).__name__}")
        if _records_nothing(tensors):  # skip torch.autograd.Function (~100 us a call)
            with torch._C._AutoDispatchBelowAutograd():
                return backward_op(grad, x, *param)
        return BackwardOfActivation.apply(grad, x, *param)

    _autograd_lib.impl(f"{name}_backward", autograd_kernel, "Autograd")


_autograd_lib = torch.library.Library("fastact", "IMPL")


def _records_nothing(tensors) -> bool:
    """No gradient to record, no tangent to compute and no torch.func transform around: autograd has nothing
    to do for a call on these tensors."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        return False
    return fwAD._current_level < 0 or all(fwAD.unpack_dual(t).tangent is None for t in tensors)


# --- vmap (torch.vmap, and torch.func.vmap of grad/jacrev...): batching rules --------------------------
# Without them torch runs the op once per batch element (and warns). The batch dimension of x is an outer
# dimension to the kernels; a batched parameter (one per batch element: model ensembles) is folded into the
# channel dimension, so that one per-channel call covers the whole batch.
def _batch_first(t: Tensor, dim: int | None, batch_size: int) -> Tensor:
    """`t` with its batch dimension first (an unbatched tensor is expanded)."""
    if dim is None:
        return t.unsqueeze(0).expand(batch_size, *t.shape)
    return t.movedim(dim, 0)


def _fold_batch_into_channels(ts: list[Tensor], per_channel: bool) -> tuple[list[Tensor], Callable]:
    """Batch-first tensors (B, *logical) -> tensors whose channel dimension (dim 1) is batch x channel, and the
    function that unfolds a result. Per channel, logical (N, C, *rest) -> (N, B*C, *rest); with one parameter
    per batch element, (B, *logical) -> (1, B, numel)."""
    shape = ts[0].shape
    if per_channel:
        folded = [t.movedim(0, 1).reshape(shape[1], shape[0] * shape[2], *shape[3:]) for t in ts]
        return folded, lambda r: r.reshape(shape[1], shape[0], *shape[2:]).movedim(1, 0)
    folded = [t.reshape(1, shape[0], math.prod(shape[1:])) for t in ts]
    return folded, lambda r: r.reshape(shape)


def _fits_sample(x: Tensor, p: Tensor) -> bool:
    """Whether p is a parameter the op takes for the sample x (one element, or one per channel): else a batching
    rule calls the op on one sample, for its own error in the caller's terms (folded, the sizes are not theirs)."""
    return p.dim() <= 1 and (p.numel() == 1 or (x.dim() >= 2 and p.numel() == x.shape[1]))


def _register_vmap(name: str, kind: str) -> None:
    forward_op = getattr(_lib, name).default
    backward_op = getattr(_lib, f"{name}_backward").default

    if kind != "tensor":
        def forward_rule(info, in_dims, x, *param):
            return forward_op(x, *param), in_dims[0]

        def backward_rule(info, in_dims, grad, x, *param):
            grad, x = (_batch_first(t, d, info.batch_size) for t, d in zip((grad, x), in_dims[:2]))
            return backward_op(grad, x, *param), 0
    else:
        def forward_rule(info, in_dims, x, p):
            x_dim, p_dim = in_dims
            if p_dim is None and p.numel() == 1:  # the batch dimension is one more outer dimension
                return forward_op(x, p), x_dim
            x = _batch_first(x, x_dim, info.batch_size)
            if p_dim is not None:
                p = p.movedim(p_dim, 0)
            if not _fits_sample(x[0], p if p_dim is None else p[0]):
                return forward_op(x[0], p if p_dim is None else p[0]), 0  # the op's own error
            if p_dim is None:  # one parameter per channel for every batch element: fold the batch into dim 0
                return forward_op(x.flatten(0, 1), p).unflatten(0, x.shape[:2]), 0
            (x,), unfold = _fold_batch_into_channels([x], per_channel=p[0].numel() > 1)
            return unfold(forward_op(x, p.reshape(-1))), 0

        def backward_rule(info, in_dims, grad, x, p):
            # d(param) is one per batch element even for a shared parameter, so the batch is always folded
            # into the channels.
            grad, x, p = (_batch_first(t, d, info.batch_size) for t, d in zip((grad, x, p), in_dims))
            per_channel = p[0].numel() > 1
            if not _fits_sample(x[0], p[0]):
                return backward_op(grad[0], x[0], p[0]), (0, 0)  # the op's own error
            (grad, x), unfold = _fold_batch_into_channels([grad, x], per_channel)
            grad_input, grad_param = backward_op(grad, x, p.reshape(-1))
            return (unfold(grad_input), grad_param.reshape(p.shape)), (0, 0)

    torch.library.register_vmap(f"fastact::{name}", forward_rule, lib=_autograd_lib)
    torch.library.register_vmap(f"fastact::{name}_backward", backward_rule, lib=_autograd_lib)


# Each op, and each backward op, as plain torch ops, in torch's global decomposition table. torch reads it where
# it needs an op's meaning rather than its kernel: torch.onnx.export lowers the forward ops through it (so the
# exported model needs neither fastact nor its kernels), and DTensor traces it to learn how an op shards (the
# shards still run fastact's kernels). torch.compile and torch.export keep fastact's ops: their tables are their
# own (under torch.compile, fastact's functions and modules trace plain forms instead, fastact/compiled.py, but a
# direct torch.ops.fastact call stays one). (prelu is written with torch.where: DTensor cannot shard through
# torch's prelu.)
_DECOMPOSITIONS = {
    "swish": lambda x, beta: TF.silu(x) if beta == 1.0 else x * torch.sigmoid(beta * x),
    "swish_param": lambda x, beta: ref.swish(x, beta.to(x.dtype)),
    "mish": lambda x: TF.mish(x),
    "leaky_relu": lambda x, negative_slope: TF.leaky_relu(x, negative_slope),
    "prelu": lambda x, weight: ref.prelu(x, weight.to(x.dtype)),
}


def _backward_decomposition(kind: str, d: _Derivatives) -> Callable:
    """<op>_backward from the closed forms: f_x * grad, and for a tensor parameter grad * f_p summed to it.
    Under dynamic shapes fake tensors run these decompositions instead of the fake kernels, so grad_input must
    take x's layout as the kernels' empty_like(x) does: f_x (x's layout) comes first in the product, and an
    elementwise op's output follows its first operand where the operands' layouts differ."""
    def backward(grad, x, *param):
        # 16-bit x and grad in float, as the kernels compute them (the closed forms lose digits in bfloat16)
        x_op, grad_op = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (x, grad))
        grad_input = (d.f_x(x_op, *param) * grad_op).to(x.dtype)
        if kind != "tensor":
            return grad_input
        grad_p = d.grad_p(grad_op, x_op, param[0]) if d.grad_p else grad_op * d.f_p(x_op, param[0])
        return grad_input, ref.reduce_to_param(grad_p, param[0])
    return backward


for _name, (_kind, _derivatives) in _OPS.items():
    _register(_name, _kind, _derivatives)
    _register_vmap(_name, _kind)
    torch._decomp.register_decomposition(getattr(_lib, _name).default)(_DECOMPOSITIONS[_name])
    torch._decomp.register_decomposition(getattr(_lib, f"{_name}_backward").default)(
        _backward_decomposition(_kind, _derivatives))


@torch.library.register_fake("fastact::leaky_relu_mask_backward")
def _fake_leaky_relu_mask_backward(grad, mask, negative_slope):
    """LeakyReLU's backward from the sign mask it saves instead of x (csrc/autograd.h, SignMaskNode): reached under
    torch.compile only through compiled autograd, which lifts an eager call's node into its graph."""
    if grad.dtype not in _KERNEL_DTYPES:
        raise RuntimeError(f"fastact.leaky_relu_mask_backward: grad must be a floating-point tensor (float32, float64, "
                           f"float16 or bfloat16), got {_c10_dtype(grad.dtype)}")
    nbytes = (grad.numel() + 7) // 8
    if mask.dtype != torch.uint8 or mask.dim() != 1 or mask.numel() != nbytes or mask.device != grad.device:
        raise RuntimeError(f"fastact.leaky_relu_mask_backward: mask must be a 1-d uint8 tensor of (grad.numel() + 7) / 8"
                           f" = {nbytes} bytes on {grad.device} (one bit per element of grad), got "
                           f"{_c10_dtype(mask.dtype)} of shape {list(mask.shape)} on {mask.device}")
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def leaky_relu_saves_mask() -> bool:
    """Whether LeakyReLU, under autograd, saves one bit per element (x > 0) instead of x where it can: plain eager
    calls on contiguous CPU tensors (not under torch.func, torch.compile or a dispatch mode; not on CUDA yet).
    On by default: at 2^20 float32 elements it keeps 0.13 MB for the backward instead of 4.2 MB, and the backward
    reads the bits instead of x. Gradients are the same bits either way."""
    return bool(_lib.leaky_relu_saves_mask())


def set_leaky_relu_saves_mask(enabled: bool) -> bool:
    """Turn LeakyReLU's saved sign mask on or off (for comparisons); returns the previous setting."""
    if not isinstance(enabled, bool):
        raise TypeError(f"fastact.set_leaky_relu_saves_mask: enabled must be True or False, got "
                        f"{type(enabled).__name__}")
    return bool(_lib.set_leaky_relu_saves_mask(enabled))


# Inductor runs an op it cannot lower as a fallback to the op's kernel, but where the op has a decomposition in
# torch's table (as fastact's do, above) and the environment variable CI is set (GitHub Actions and most CI
# services set it), inductor asserts instead: "make_fallback(fastact.swish.default): a decomposition exists".
# So fastact registers its kernels as inductor fallbacks itself, with the layout constraint the implicit
# fallback would take, as torch does for torchvision's roi_align. Inductor takes seconds to import, so this
# waits until something else imports its lowering module.
_INDUCTOR_LOWERING = "torch._inductor.lowering"


def _register_inductor_fallbacks(lowering) -> None:
    try:
        from torch._library.utils import get_layout_constraint_tag
        for name in _OPS:
            for op in (getattr(_lib, name).default, getattr(_lib, f"{name}_backward").default):
                if op not in lowering.lowerings:
                    tag = get_layout_constraint_tag(op, with_default=True)
                    lowering.make_fallback(op, layout_constraint=lowering.tag_to_layout_constraint(tag),
                                           warn=False)
    except Exception as e:  # a torch whose inductor internals differ: the implicit fallback still runs
        # logged, not warned: under -W error a warning would fail the import of inductor itself
        logging.getLogger(__name__).warning(
            "fastact: could not register its ops with torch.compile's inductor (%r); they still compile, except "
            "where the environment variable CI is set", e)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` once the module `name` has been imported, if ever. Every spec found for it is
    given a loader that calls back, not only the first: a tool may look the module up (importlib.util.find_spec,
    torch._logging.set_logs) without importing it, and the import then finds it afresh."""

    def __init__(self, name: str, callback: Callable) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:  # what the import would find without this finder
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_module_then_callback(module):
            exec_module(module)
            if module.__name__ == self.name:  # a loader may be shared (a zip's): this finder's module only
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                self.callback(module)
        spec.loader.exec_module = exec_module_then_callback
        return spec


if _INDUCTOR_LOWERING in sys.modules:
    _register_inductor_fallbacks(sys.modules[_INDUCTOR_LOWERING])
else:
    sys.meta_path.insert(0, _AfterImport(_INDUCTOR_LOWERING, _register_inductor_fallbacks))


# DTensor: every op gets explicit sharding strategies. torch 2.14 can derive them from the decompositions above,
# but torch 2.11 could not for the ops with a tensor parameter (it replicated x, an all-gather, for prelu and
# swish_param: measured 2026-11-28), and torch 2.9 not even for those with a float one (it refused them). The
# output follows x, sharded along any dimension with the parameter replicated, or along the channels with a
# per-channel parameter sharded with them; a tensor parameter's gradient is then a partial sum, or sharded too.
# A float parameter is not a tensor: its placement is None.
_DTENSOR = "torch.distributed.tensor"


def _register_dtensor_sharding(_module=None) -> None:
    try:
        from torch.distributed.tensor import Partial, Replicate, Shard
        from torch.distributed.tensor.experimental import register_sharding
    except ImportError:  # a torch without distributed: nothing to shard
        return

    def param_placement(param, dim):
        if param is None:  # no parameter
            return [], False
        if not hasattr(param, "shape"):  # a float
            return [None], False
        per_channel = math.prod(param.shape) > 1
        return ([Shard(0)], True) if per_channel and dim == 1 else ([Replicate()], False)

    def placements(x, param):
        """(x's placement, the parameter's (a list of none or one), whether the parameter is sharded) per dim."""
        yield Replicate(), param_placement(param, None)[0], False
        for dim in range(x.ndim):
            yield (Shard(dim), *param_placement(param, dim))

    for name, (kind, _) in _OPS.items():
        forward, backward = getattr(_lib, name).default, getattr(_lib, f"{name}_backward").default
        has_tensor_param = kind == "tensor"

        @register_sharding(forward)
        def forward_sharding(x, param=None):
            return [([x_placement], [x_placement, *p]) for x_placement, p, _ in placements(x, param)]

        @register_sharding(backward)
        def backward_sharding(grad, x, param=None, has_tensor_param=has_tensor_param):
            strategies = []
            for x_placement, p, sharded in placements(x, param):
                if not has_tensor_param:
                    outputs = [x_placement]
                elif x_placement == Replicate():
                    outputs = [Replicate(), Replicate()]
                else:
                    outputs = [x_placement, Shard(0) if sharded else Partial()]
                strategies.append((outputs, [x_placement, x_placement, *p]))
            return strategies


if _DTENSOR in sys.modules:
    _register_dtensor_sharding()
else:
    sys.meta_path.insert(0, _AfterImport(_DTENSOR, _register_dtensor_sharding))
