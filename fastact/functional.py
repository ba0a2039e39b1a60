"""Functions mirroring torch.nn.functional (silu, mish, leaky_relu, prelu: the same names, arguments and
defaults) plus swish with a float or tensor beta. All are differentiable (twice) and run fastact's kernels;
torch.compile traces them as plain torch ops that it fuses with their neighbours (fastact/compiled.py)."""
from __future__ import annotations

import numbers

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import _C as _eager  # the ops' entry points for plain eager calls (csrc/python_module.cpp)
from . import compiled as _compiled

try:
    import numpy as _np
except ImportError:  # torch runs without numpy
    _np = None

__all__ = ["swish", "silu", "mish", "leaky_relu", "prelu"]

_ops = torch.ops.fastact


# Each function first offers its call to fastact._C's entry point, which skips torch.ops' generic argument
# parsing (~2.5 us a call, as much as torch's whole F.silu on a small tensor) and answers NotImplemented for
# anything but a plain tensor with a Python number or a plain parameter tensor. torch.compile traces the
# torch.ops path (torch.compiler.is_compiling() is then true): its graphs hold the ops either way.


# What stands for a tensor: a tensor, or torch.fx's placeholder for one while symbolic_trace runs the model.
_TensorLike = (Tensor, torch.fx.Proxy)


def _call(name: str, x, *args) -> Tensor:
    """torch.ops.fastact.<name>'s default overload; for torch.fx's Proxy the overload packet, so that
    TorchScript can script the traced graph (it cannot look an overload up by name, as
    torch.ops.fastact.prelu.default). Under torch.compile, the op as plain torch ops that it fuses
    (fastact/compiled.py)."""
    if isinstance(x, Tensor) and _compiled.fuses(name, x):
        return _compiled.call(name, x, *args)
    op = getattr(_ops, name)
    return (op if isinstance(x, torch.fx.Proxy) else op.default)(x, *args)


def _check_tensor(op: str, arg: str, value) -> None:
    if not isinstance(value, _TensorLike):
        raise TypeError(f"fastact.{op}: {arg} must be a tensor, got {type(value).__name__}")


def _check_number(op: str, arg: str, value) -> float:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.requires_grad:
        if value.dtype == torch.bool or value.is_complex() or value.is_meta:  # a real number's value, not these
            raise TypeError(f"fastact.{op}: {arg} must be a real number, got a "
                            f"{'meta' if value.is_meta else str(value.dtype).replace('torch.', '')} tensor")
        return float(value)
    if _np is not None and isinstance(value, _np.ndarray) and value.ndim == 0 and (
            torch.compiler.is_compiling() or value.dtype.kind in "fiu"):  # (dynamo cannot read an array's dtype)
        # a numpy scalar as torch.compile passes it (a 0-d array; float64 traces as a constant, float32
        # as a symbolic float that a custom op's float argument does not take)
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"fastact.{op}: {arg} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise OverflowError(f"fastact.{op}: {arg} is too large to convert to a float (at most ~1.8e308)") from None


def _plain_eager(x: Tensor) -> bool:
    """A plain tensor (not a subclass such as DTensor, not torch.fx's Proxy), not traced by torch.compile or
    torch.jit.trace, not inside a torch.func transform, and without a forward-mode tangent."""
    if type(x) is not Tensor and type(x) is not torch.nn.Parameter:
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    # A tensor captured by a torch.func transform is not wrapped, but writing it in place must reach functorch,
    # which refuses it (the gradient would read the new values).
    if torch._C._are_functorch_transforms_active():
        return False
    return fwAD._current_level < 0 or fwAD.unpack_dual(x).tangent is None


# torch.export records the ops below an autograd.Function, not the Function: an in-place LeakyReLU that saves its
# output would leave the exported graph's op saving x, which the write then changes, so export takes the form of
# in-place SiLU and Mish (a copy of x saved). torch 2.9 keeps the Function's form: there is_exporting() also
# held under torch.compile, where that form failed.
_EXPORT_TAKES_COPY_FORM = torch.torch_version.TorchVersion(torch.__version__) >= (2, 10)


def _exporting_functionally() -> bool:
    return _EXPORT_TAKES_COPY_FORM and torch.compiler.is_exporting()


def _inplace(name: str, op_name: str, eager_inplace, x: Tensor, *args) -> Tensor:
    """op(x, *args) written into x, as torch's in-place activations do: under autograd x becomes the output
    (its old value is kept for the backward, as torch's in-place SiLU and Mish keep it, and for a negative-slope
    LeakyReLU, which torch refuses in place under autograd; a leaf that requires grad is refused by torch's
    own check), and the write bumps x's version, so a graph that saved x raises rather than use new values.
    In eager mode fastact._C's in-place form (eager_inplace) does all that in C++, as torch's generated code."""
    _check_tensor(name, "input", x)
    if _plain_eager(x):
        y = eager_inplace(x, *args)
        if y is not NotImplemented:
            return y
        if not (torch.is_grad_enabled() and x.requires_grad):
            # no copy: the kernel reads each element before writing it
            return getattr(_ops, op_name).out(x, *args, out=x)
    # Autograd, transforms, tangents, compile, jit.trace (one graph whatever the grad mode, which trace's check
    # changes): a differentiable, functionalizable copy (torch.compile removes it)
    return x.copy_(_call(op_name, x.clone(), *args))


class _LeakyReLUSavingOutput(torch.autograd.Function):
    """leaky_relu for a slope >= 0 whose backward reads the output instead of the input (y > 0 exactly where
    x > 0, and y = 0 at x = 0), as torch's leaky_relu_ does; its output is then copied into x. For in-place calls
    that cannot go through _LeakyReLUInPlace: under torch.compile (where, for a graph input, the backward must
    not need the input that the compiled code overwrites), and where torch refuses the write (copy_ then says so
    before anything is written)."""

    @staticmethod
    def forward(ctx, x: Tensor, negative_slope: float) -> Tensor:
        ctx.fused = _compiled.fuses("leaky_relu", x)  # under torch.compile: plain torch ops (fastact/compiled.py)
        if ctx.fused:
            _compiled.check("leaky_relu", x, negative_slope)
        y = (_compiled.forward("leaky_relu", x, negative_slope) if ctx.fused
             else _ops.leaky_relu.default(x, negative_slope))
        ctx.save_for_backward(y)
        ctx.negative_slope = negative_slope
        return y

    @staticmethod
    def backward(ctx, grad):
        y, = ctx.saved_tensors
        if ctx.fused:
            return _compiled.backward("leaky_relu", grad, y, ctx.negative_slope), None
        return _ops.leaky_relu_backward.default(grad, y, ctx.negative_slope), None


class _LeakyReLUInPlace(_LeakyReLUSavingOutput):
    """The same in place, in eager mode, as torch's leaky_relu_: x is overwritten and saved as the output, so its
    old value is not kept and a layer after it that saves its input keeps the same tensor (autograd keeps no more
    than with torch's in-place LeakyReLU)."""

    @staticmethod
    def forward(ctx, x: Tensor, negative_slope: float) -> Tensor:
        # (autograd is off in here: out= is allowed.) mark_dirty bumps x's version, so the write itself must not:
        # one bump per in-place op, as torch's leaky_relu_
        with torch.autograd._unsafe_preserve_version_counter(x):
            _ops.leaky_relu.out(x, negative_slope, out=x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.negative_slope = negative_slope
        ctx.fused = False  # (eager only)
        return x


def _may_write_in_place(x: Tensor) -> bool:
    """Whether an autograd.Function may write x and mark it dirty: torch checks a dirty tensor only after the
    Function's forward has written it, so the cases torch refuses are told apart first (a leaf, a view of one,
    a view that cannot be rebased: made in no_grad mode or by a function returning several views)."""
    if not _plain_eager(x) or x.is_leaf:
        return False
    base = x._base
    if base is None:
        return True
    try:
        default_view = torch._C._autograd._get_creation_meta(x) == torch._C._autograd.CreationMeta.DEFAULT
    except (AttributeError, RuntimeError):  # (a private API: without it, the safe path)
        return False
    return default_view and not (base.is_leaf and base.requires_grad)


def _records_gradient_only(x: Tensor) -> bool:
    """Autograd records x's gradient, and no torch.func transform or forward-mode tangent is involved."""
    if not (torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad) or torch.jit.is_tracing():
        return False  # (torch.jit.trace records no Python autograd.Function)
    if torch._C._are_functorch_transforms_active():  # (a check torch.compile can trace)
        return False
    if torch.compiler.is_compiling():  # (torch.compile traces what the calls below would ask)
        return True
    if torch.is_inference_mode_enabled():  # (autograd records nothing there, whatever grad mode says)
        return False
    return fwAD._current_level < 0 or fwAD.unpack_dual(x).tangent is None


def _script_writes_in_place(x: Tensor) -> bool:
    """Under TorchScript, whether inplace=True can write the kernel's output straight into x (the .out
    overloads); otherwise x is overwritten with the result of a copy, so that autograd stays exact (eager's
    in-place LeakyReLU with a slope >= 0 avoids that copy; TorchScript cannot)."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def swish(input: Tensor, beta: float | Tensor = 1.0) -> Tensor:
    """x * sigmoid(beta * x). beta: a float, or a tensor of one element or one per channel (dim 1)."""
    if torch.jit.is_scripting():  # TorchScript compiles only this branch (the checks below are Python)
        if isinstance(beta, Tensor):
            return torch.ops.fastact.swish_param(input, beta)
        return torch.ops.fastact.swish(input, beta)
    if not torch.compiler.is_compiling():
        y = (_eager.swish_param if isinstance(beta, Tensor) else _eager.swish)(input, beta)
        if y is not NotImplemented:
            return y
    _check_tensor("swish", "input", input)
    if isinstance(beta, _TensorLike):
        return _call("swish_param", input, beta)
    return _call("swish", input, _check_number("swish", "beta", beta))


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """x * sigmoid(x), like torch.nn.functional.silu."""
    if torch.jit.is_scripting():
        if inplace and _script_writes_in_place(input):
            return torch.ops.fastact.swish(input, 1.0, out=input)
        y = torch.ops.fastact.swish(input.clone() if inplace else input, 1.0)
        return input.copy_(y) if inplace else y
    if inplace:
        return _inplace("silu", "swish", _eager.swish_, input, 1.0)
    if not torch.compiler.is_compiling():
        y = _eager.swish(input, 1.0)
        if y is not NotImplemented:
            return y
    _check_tensor("silu", "input", input)
    return _call("swish", input, 1.0)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """x * tanh(softplus(x)), like torch.nn.functional.mish."""
    if torch.jit.is_scripting():
        if inplace and _script_writes_in_place(input):
            return torch.ops.fastact.mish(input, out=input)
        y = torch.ops.fastact.mish(input.clone() if inplace else input)
        return input.copy_(y) if inplace else y
    if inplace:
        return _inplace("mish", "mish", _eager.mish_, input)
    if not torch.compiler.is_compiling():
        y = _eager.mish(input)
        if y is not NotImplemented:
            return y
    _check_tensor("mish", "input", input)
    return _call("mish", input)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x for x > 0, negative_slope * x otherwise, for any real slope (1: identity, 0: ReLU, -1: |x|)."""
    if torch.jit.is_scripting():
        if inplace and _script_writes_in_place(input):
            return torch.ops.fastact.leaky_relu(input, negative_slope, out=input)
        y = torch.ops.fastact.leaky_relu(input.clone() if inplace else input, negative_slope)
        return input.copy_(y) if inplace else y
    if not inplace and not torch.compiler.is_compiling():
        y = _eager.leaky_relu(input, negative_slope)
        if y is not NotImplemented:
            return y
    negative_slope = _check_number("leaky_relu", "negative_slope", negative_slope)
    if inplace and _plain_eager(input):  # recorded in C++ as torch's leaky_relu_ (saving the output for a slope >= 0)
        y = _eager.leaky_relu_(input, negative_slope)
        if y is not NotImplemented:
            return y
    if inplace and negative_slope >= 0 and _records_gradient_only(input) and not _exporting_functionally():
        if _may_write_in_place(input):
            return _LeakyReLUInPlace.apply(input, negative_slope)
        # Under torch.compile, a mark_dirty Function traced on a graph input gets wrong gradients (torch 2.14):
        # there, and where torch refuses the write, the output is computed apart and copied (copy_ checks first).
        return input.copy_(_LeakyReLUSavingOutput.apply(input, negative_slope))
    if inplace:
        return _inplace("leaky_relu", "leaky_relu", _eager.leaky_relu_, input, negative_slope)
    _check_tensor("leaky_relu", "input", input)
    return _call("leaky_relu", input, negative_slope)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """Like torch.nn.functional.prelu: weight has one element or one per channel (dim 1)."""
    if torch.jit.is_scripting():
        return torch.ops.fastact.prelu(input, weight)
    if not torch.compiler.is_compiling():
        y = _eager.prelu(input, weight)
        if y is not NotImplemented:
            return y
    _check_tensor("prelu", "input", input)
    _check_tensor("prelu", "weight", weight)
    return _call("prelu", input, weight)
