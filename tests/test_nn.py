"""Tests of fastact's user-facing layer: fastact.nn modules, fastact.nn.convert, and the functional API seen
through autograd, torch.compile, autocast, DDP and saved-tensor hooks.

Every expected value comes from torch's own modules (run in float64) or from the float64 reference math in
`fastact.reference`, never from fastact itself.
"""
from __future__ import annotations

import copy
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import fastact  # noqa: F401  (registers torch.ops.fastact)
import fastact.nn as fnn
from fastact import functional as F
from fastact import reference as ref

C = 5  # channels of the per-channel parameters in the module tests

# Tolerances against a float64 expectation. float32 kernels are a few ulp off; parameter gradients are sums
# over the whole input, so they get a looser bound in float32.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
}
TOL_PARAM_GRAD = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}


def _close(actual, expected, tol, msg=""):
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), **tol, msg=lambda m: f"{msg}\n{m}")


# ---------------------------------------------------------------------------------------------------------
# 1. Every module matches torch's module / the reference, forward and backward, float32 and float64
# ---------------------------------------------------------------------------------------------------------

def _random_param(param: torch.Tensor, low: float, high: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        param.copy_(torch.rand(param.shape, generator=g, dtype=torch.float64) * (high - low) + low)


def _torch_module_expected(torch_module_factory):
    """Expected = torch's own module, in float64, with the fastact module's parameters loaded."""
    def build(fa_module):
        m = torch_module_factory()
        m.load_state_dict(fa_module.state_dict())  # also checks the state_dict keys/shapes line up
        m = m.double()
        return m, list(m.parameters())
    return build


def _reference_expected(fn):
    """Expected = the float64 reference composition, on float64 copies of the fastact module's parameters."""
    def build(fa_module):
        params = [p.detach().double().clone().requires_grad_(True) for p in fa_module.parameters()]
        return (lambda x: fn(x, params)), params
    return build


def _swish_learnable_channel():
    m = fnn.Swish(learnable=True, num_parameters=C)
    _random_param(m.beta, -1.0, 2.0, seed=1)
    return m


def _prelu(n):
    def make():
        m = fnn.PReLU(n)
        _random_param(m.weight, -1.5, 1.5, seed=2)  # negative, in (0, 1) and > 1 slopes
        return m
    return make


# id -> (fastact module factory, expected builder, per-channel?)
MODULE_CASES = {
    "Swish()": (lambda: fnn.Swish(), _torch_module_expected(nn.SiLU), False),
    "Swish(1.7)": (lambda: fnn.Swish(1.7), _reference_expected(lambda x, p: ref.swish(x, 1.7)), False),
    "Swish(-0.5)": (lambda: fnn.Swish(-0.5), _reference_expected(lambda x, p: ref.swish(x, -0.5)), False),
    "Swish(0)": (lambda: fnn.Swish(0.0), _reference_expected(lambda x, p: ref.swish(x, 0.0)), False),
    "Swish(learnable,1)": (lambda: fnn.Swish(1.3, learnable=True),
                           _reference_expected(lambda x, p: ref.swish(x, p[0])), False),
    "Swish(learnable,C)": (_swish_learnable_channel, _reference_expected(lambda x, p: ref.swish(x, p[0])), True),
    "SiLU": (lambda: fnn.SiLU(), _torch_module_expected(nn.SiLU), False),
    "Mish": (lambda: fnn.Mish(), _torch_module_expected(nn.Mish), False),
    **{f"LeakyReLU({s})": ((lambda s=s: fnn.LeakyReLU(s)), _torch_module_expected(lambda s=s: nn.LeakyReLU(s)), False)
       for s in (0.01, 0.0, 1.0, -1.0, 2.5)},
    "LeakyReLU()": (lambda: fnn.LeakyReLU(), _torch_module_expected(nn.LeakyReLU), False),
    "PReLU()": (_prelu(1), _torch_module_expected(nn.PReLU), False),
    "PReLU(C)": (_prelu(C), _torch_module_expected(lambda: nn.PReLU(C)), True),
}


def _make_input(layout: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A leaf input (requires grad) with the given shape/memory layout; values include exact zeros and large
    magnitudes (tails of every activation)."""
    shapes = {"4d": (3, C, 4, 6), "2d": (7, C), "1d": (11,), "0d": (), "empty": (0, C, 3)}
    kind = layout.split("-")[0]
    shape = shapes[kind]
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    flat = v.view(-1)
    if flat.numel() >= 8:
        flat[::7] = 0.0
        flat[3] = 25.0
        flat[5] = -25.0
    elif flat.numel() == 1:
        flat[0] = -0.75
    v = v.to(dtype)
    if layout in ("4d", "2d", "1d", "0d", "empty"):
        x = v.clone()
    elif layout == "4d-channels_last":
        x = v.contiguous(memory_format=torch.channels_last)
    elif layout == "4d-permuted":  # dense, channel dim outermost in memory
        x = v.permute(1, 3, 0, 2).contiguous().permute(2, 0, 3, 1)
    elif layout == "4d-strided":  # not dense: every other element of a larger buffer
        base = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        x = base[..., ::2]
        x.copy_(v)
    elif layout == "2d-transposed":
        x = v.t().contiguous().t()
    else:
        raise AssertionError(layout)
    assert torch.equal(x, v) and x.shape == shape
    return x.detach().requires_grad_(True)


LAYOUTS = ["4d", "4d-channels_last", "4d-permuted", "4d-strided", "2d", "2d-transposed", "1d", "0d", "empty"]
PER_CHANNEL_LAYOUTS = [l for l in LAYOUTS if not l.startswith(("1d", "0d"))]
MODULE_PARAMS = [
    pytest.param(case, layout, id=f"{case}-{layout}")
    for case, (_, _, per_channel) in MODULE_CASES.items()
    for layout in (PER_CHANNEL_LAYOUTS if per_channel else LAYOUTS)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case,layout", MODULE_PARAMS)
def test_module_matches_torch_and_reference(case, layout, dtype):
    make, expected_builder, _ = MODULE_CASES[case]
    module = make().to(dtype)
    x = _make_input(layout, dtype)
    expected_fn, expected_params = expected_builder(module)
    x64 = x.detach().double().requires_grad_(True)

    y = module(x)
    y64 = expected_fn(x64)
    assert y.dtype == dtype and y.shape == x.shape
    _close(y, y64, TOL[dtype], f"{case} forward")

    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(x.shape, generator=g, dtype=torch.float64)
    params = list(module.parameters())
    grads = torch.autograd.grad(y, [x, *params], grad_out.to(dtype))
    grads64 = torch.autograd.grad(y64, [x64, *expected_params], grad_out)
    assert grads[0].dtype == dtype and grads[0].shape == x.shape
    _close(grads[0], grads64[0], TOL[dtype], f"{case} grad x")
    for p, gp, gp64 in zip(params, grads[1:], grads64[1:]):
        assert gp.dtype == p.dtype and gp.shape == p.shape
        _close(gp, gp64, TOL_PARAM_GRAD[dtype], f"{case} grad param")


@pytest.mark.parametrize("slope", [0.01, 0.0, 1.0, -1.0, 2.5])
def test_leaky_relu_special_slopes(slope):
    """Slope 0 is ReLU, 1 is the identity, -1 is |x| (with the derivative at 0 being the slope)."""
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    y = fnn.LeakyReLU(slope)(x)
    special = {0.0: torch.relu(x.detach()), 1.0: x.detach(), -1.0: x.detach().abs()}
    if slope in special:
        assert torch.equal(y.detach(), special[slope])
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(gx, torch.tensor([slope, slope, slope, 1.0, 1.0], dtype=torch.float64))


def test_activations_registry():
    assert fnn.ACTIVATIONS == {"swish": fnn.Swish, "silu": fnn.SiLU, "mish": fnn.Mish,
                               "leaky_relu": fnn.LeakyReLU, "prelu": fnn.PReLU}


# ---------------------------------------------------------------------------------------------------------
# 2. extra_repr and inplace=True
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fa,torch_module", [
    (lambda: fnn.SiLU(), lambda: nn.SiLU()),
    (lambda: fnn.SiLU(inplace=True), lambda: nn.SiLU(inplace=True)),
    (lambda: fnn.Mish(), lambda: nn.Mish()),
    (lambda: fnn.Mish(inplace=True), lambda: nn.Mish(inplace=True)),
    (lambda: fnn.LeakyReLU(), lambda: nn.LeakyReLU()),
    (lambda: fnn.LeakyReLU(0.2, inplace=True), lambda: nn.LeakyReLU(0.2, inplace=True)),
    (lambda: fnn.LeakyReLU(-1), lambda: nn.LeakyReLU(-1.0)),
    (lambda: fnn.PReLU(), lambda: nn.PReLU()),
    (lambda: fnn.PReLU(8), lambda: nn.PReLU(8)),
], ids=["SiLU", "SiLU-inplace", "Mish", "Mish-inplace", "LeakyReLU", "LeakyReLU-inplace", "LeakyReLU(-1)",
        "PReLU", "PReLU(8)"])
def test_extra_repr_matches_torch(fa, torch_module):
    a, b = fa(), torch_module()
    assert a.extra_repr() == b.extra_repr()
    assert repr(a) == repr(b)  # same class names, same arguments


def test_swish_extra_repr():
    assert repr(fnn.Swish()) == "Swish(beta=1.0)"
    assert repr(fnn.Swish(1.5)) == "Swish(beta=1.5)"
    assert fnn.Swish(2, learnable=True).extra_repr() == "beta=2.0, learnable=True, num_parameters=1"
    assert fnn.Swish(learnable=True, num_parameters=4).extra_repr() == "beta=1.0, learnable=True, num_parameters=4"


def test_functional_signatures_match_torch():
    """Calls written for torch.nn.functional, keywords included, work unchanged (as torch's, the tensor is
    `input`), and so do keyword calls of the modules."""
    import inspect
    for name in ("silu", "mish", "leaky_relu"):
        ours, theirs = inspect.signature(getattr(F, name)), inspect.signature(getattr(TF, name))
        assert list(ours.parameters) == list(theirs.parameters), name
        assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()], name
    assert list(inspect.signature(F.prelu).parameters) == ["input", "weight"]  # (torch's is a builtin)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64)
    _close(F.silu(input=x), TF.silu(x), TOL[torch.float64])
    _close(F.leaky_relu(input=x, negative_slope=0.3), TF.leaky_relu(x, 0.3), TOL[torch.float64])
    _close(F.prelu(input=x, weight=w), TF.prelu(x, w), TOL[torch.float64])
    for module in (fnn.SiLU(), fnn.Mish(), fnn.LeakyReLU(), fnn.PReLU(3).double(), fnn.Swish(1.5)):
        assert torch.equal(module(input=x), module(x))


def test_learnable_swish_resets_to_its_initial_beta():
    """Deferred initialisation (a model built on the meta device, then to_empty() and reset_parameters(), as
    FSDP and large-model loaders do) gives beta its initial value, as PReLU's weight gets its init."""
    with torch.device("meta"):
        model = nn.Sequential(fnn.Swish(1.5, learnable=True, num_parameters=4), fnn.PReLU(4, init=0.1))
    model.to_empty(device="cpu")
    for module in model:
        module.reset_parameters()
    assert torch.equal(model[0].beta, torch.full((4,), 1.5))
    assert torch.equal(model[1].weight, torch.full((4,), 0.1))
    fixed = fnn.Swish(2.0)
    fixed.reset_parameters()  # (nothing to reset)
    assert fixed.beta == 2.0
    # a module pickled before the initial beta was kept still loads, prints and runs
    old = fnn.Swish(1.5, learnable=True)
    del old.init
    loaded = pickle.loads(pickle.dumps(old))
    assert repr(loaded) == "Swish(learnable=True, num_parameters=1)"
    with pytest.raises(RuntimeError, match="older fastact"):
        loaded.reset_parameters()


INPLACE_CASES = {
    "SiLU": (lambda: fnn.SiLU(inplace=True), lambda x: ref.swish(x, 1.0)),
    "Mish": (lambda: fnn.Mish(inplace=True), ref.mish),
    "LeakyReLU(0.2)": (lambda: fnn.LeakyReLU(0.2, inplace=True), lambda x: ref.leaky_relu(x, 0.2)),
    "LeakyReLU(-1)": (lambda: fnn.LeakyReLU(-1.0, inplace=True), lambda x: ref.leaky_relu(x, -1.0)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["4d", "4d-channels_last", "4d-strided"])
@pytest.mark.parametrize("case", list(INPLACE_CASES))
def test_inplace_no_grad_overwrites_input(case, layout, dtype):
    make, reference = INPLACE_CASES[case]
    if layout == "4d-strided":  # a non-dense view into a buffer whose other elements must stay untouched
        v = _make_input("4d", dtype).detach()
        buf = torch.full(v.shape[:-1] + (2 * v.shape[-1],), 7.0, dtype=dtype)
        x = buf[..., ::2]
        x.copy_(v)
    else:
        x = _make_input(layout, dtype).detach()
    expected = reference(x.double())
    with torch.no_grad():
        y = make()(x)
    assert y is x  # the result is the input tensor itself
    _close(x, expected, TOL[dtype], f"{case} in-place values")
    # (that the write bumps x's version counter is test_inplace_on_tensor_saved_for_backward_is_detected)
    if layout == "4d-strided":
        assert x.stride()[-1] == 2  # still the same non-dense view of buf
        assert (buf[..., 1::2] == 7.0).all()


@pytest.mark.parametrize("case", list(INPLACE_CASES))
def test_inplace_grad_disabled_on_leaf_requiring_grad(case):
    """Under no_grad, even a leaf that requires grad is written in place (as torch's in-place ops do)."""
    make, reference = INPLACE_CASES[case]
    x = _make_input("4d", torch.float64)
    expected = reference(x.detach())
    with torch.no_grad():
        y = make()(x)
    assert y is x
    _close(x, expected, TOL[torch.float64])


@pytest.mark.parametrize("case", list(INPLACE_CASES))
def test_inplace_under_autograd(case):
    """As torch's in-place activations: a leaf that requires grad is refused; a non-leaf becomes the output
    (written in place, also when the caller ignores the return value) and gradients flow through it."""
    make, reference = INPLACE_CASES[case]
    torch_make = {"SiLU": lambda: nn.SiLU(inplace=True), "Mish": lambda: nn.Mish(inplace=True),
                  "LeakyReLU(0.2)": lambda: nn.LeakyReLU(0.2, inplace=True),
                  "LeakyReLU(-1)": lambda: nn.LeakyReLU(-1.0, inplace=True)}[case]
    x = _make_input("4d", torch.float64)
    x_before = x.detach().clone()
    for module in (make(), torch_make()):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            module(x)
    assert torch.equal(x.detach(), x_before)

    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = x_before.clone().requires_grad_(True)
    h = a * 2.0
    version = h._version
    y = make()(h)
    h_torch = x_before.clone().requires_grad_(True) * 2.0
    torch_version = h_torch._version
    torch_make()(h_torch)
    assert y is h and h._version - version == h_torch._version - torch_version == 1  # one bump, as torch
    _close(h, reference(x_before * 2.0), TOL[torch.float64])
    (ga,) = torch.autograd.grad(h, a, g)
    a64 = x_before.clone().requires_grad_(True)
    (ga64,) = torch.autograd.grad(reference(a64 * 2.0), a64, g)
    _close(ga, ga64, TOL[torch.float64], "non-leaf")


@pytest.mark.parametrize("case", list(INPLACE_CASES))
def test_inplace_when_input_needs_no_grad_overwrites_it(case):
    """Grad mode on but the input does not require grad: written in place, like torch."""
    make, reference = INPLACE_CASES[case]
    x = _make_input("4d", torch.float32).detach()
    expected = reference(x.double())
    y = make()(x)
    assert y is x
    _close(x, expected, TOL[torch.float32])


@pytest.mark.parametrize("case", list(INPLACE_CASES))
def test_inplace_on_tensor_saved_for_backward_is_detected(case):
    make, reference = INPLACE_CASES[case]
    x0 = torch.tensor([1.5, -0.3, -2.2, 0.6, -1.1], dtype=torch.float64)
    w = torch.ones(5, dtype=torch.float64, requires_grad=True)
    x = x0.clone()  # does not require grad
    loss = (x * w).sum()  # saves x to compute d loss / d w = x
    version = x._version
    make()(x)  # grad mode on, x needs no grad: written in place
    # Either autograd notices (torch's behaviour: version bump -> error on backward) or, at the very least,
    # the gradient must still be the original x. fastact does neither.
    assert x._version > version
    try:
        (gw,) = torch.autograd.grad(loss, w)
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
    else:
        torch.testing.assert_close(gw, x0)


@pytest.mark.parametrize("case", list(INPLACE_CASES))
def test_inplace_under_forward_ad_vmap_and_compile(case):
    """In place where torch.func or a tangent is involved: the same values, tangents and batching as out of
    place (the write must not bypass them), and torch.compile of an in-place module under no_grad."""
    make, reference = INPLACE_CASES[case]
    x = _make_input("4d", torch.float64).detach()
    v = torch.randn_like(x)
    _, expected = torch.func.jvp(reference, (x,), (v,))
    _, tangent = torch.func.jvp(lambda u: make()(u * 1.0), (x,), (v,))
    _close(tangent, expected, TOL[torch.float64], "torch.func.jvp")
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        d = fwAD.make_dual(x.clone(), v)
        out = make()(d)
        assert out is d
        _close(fwAD.unpack_dual(out).tangent, expected, TOL[torch.float64], "forward_ad")
    with torch.no_grad():
        batched = torch.vmap(lambda u: make()(u * 1.0))(x)
    _close(batched, reference(x), TOL[torch.float64], "vmap")
    model = nn.Sequential(nn.Identity(), make()).eval()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)(x.clone())
    _close(compiled, reference(x), TOL[torch.float64], "compile")


@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_inplace_leaky_relu_keeps_no_more_for_backward_than_torch(slope):
    """As torch's leaky_relu_, an in-place LeakyReLU with a slope >= 0 under autograd overwrites its input and
    saves it as the output, which the next convolution saves anyway: a Conv-BN-LeakyReLU stack keeps the bytes
    it keeps with torch's LeakyReLU(inplace=True), one activation less than out of place, with torch's gradients;
    likewise on a view. Where torch refuses the write, nothing is written."""
    from fastact.kernel_bench import saved_bytes

    def stack(act):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act(slope),
                             nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), act(slope), nn.Conv2d(8, 1, 1)).double()

    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    ours, theirs = stack(lambda s: fnn.LeakyReLU(s, inplace=True)), stack(lambda s: nn.LeakyReLU(s, inplace=True))
    kept = saved_bytes(lambda: ours(x))
    assert kept == saved_bytes(lambda: theirs(x))
    assert kept < saved_bytes(lambda: stack(lambda s: fnn.LeakyReLU(s))(x))
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    # a view of a non-leaf too: the slice is written and saved, with torch's gradients
    grads, kept = [], []
    for leaky in (F.leaky_relu, TF.leaky_relu):
        a = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        kept.append(saved_bytes(lambda: leaky((a * 1.0)[:, :4], slope, inplace=True)))
        h = a * 1.0
        assert leaky(h[:, :4], slope, inplace=True)._base is h
        (h * torch.arange(24.0, dtype=torch.float64).view(4, 6)).sum().backward()
        grads.append(a.grad)
    assert kept[0] == kept[1]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    # the write is refused before it happens where torch refuses it: a leaf, a view of one, a split's view, a
    # view made under no_grad
    leaf = torch.randn(6, dtype=torch.float64, requires_grad=True)
    before = leaf.detach().clone()
    h = leaf * 1.0
    with torch.no_grad():
        no_grad_view = h[1:]
    split_base = leaf * 1.0
    for target in (leaf, leaf[1:], split_base.split(3)[0], no_grad_view):
        with pytest.raises(RuntimeError, match="in-place|inplace"):
            F.leaky_relu(target, slope, inplace=True)
    for unchanged in (leaf, h, split_base):
        assert torch.equal(unchanged.detach(), before)


@pytest.mark.parametrize("case", ["SiLU", "Mish", "LeakyReLU(-1)"])
def test_inplace_under_autograd_keeps_what_torch_keeps_and_differentiates_twice(case):
    """In eager mode the in-place forms are recorded in C++ as torch's silu_ and mish_ are: a clone of the old
    values is saved (the bytes torch keeps), taken through autograd so that a double backward reaches the
    input's history; on a view of a non-leaf the write goes through the base, with torch's gradients."""
    from fastact.kernel_bench import saved_bytes

    ours = {"SiLU": lambda t: F.silu(t, inplace=True), "Mish": lambda t: F.mish(t, inplace=True),
            "LeakyReLU(-1)": lambda t: F.leaky_relu(t, -1.0, inplace=True)}[case]
    theirs = {"SiLU": lambda t: TF.silu(t, inplace=True), "Mish": lambda t: TF.mish(t, inplace=True),
              # (torch refuses a negative slope in place under autograd: the same written back by hand)
              "LeakyReLU(-1)": lambda t: t.copy_(TF.leaky_relu(t.clone(), -1.0))}[case]
    a = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert saved_bytes(lambda: ours(a * 1.0)) == saved_bytes(lambda: theirs(a * 1.0)) == a.numel() * 8
    weights = torch.arange(24.0, dtype=torch.float64).view(4, 6)
    grads = []
    for f in (ours, theirs):
        a.grad = None
        h = a * 1.0
        view = h[:, 1:5]
        result = f(view)
        if f is ours:
            assert result is view and view._base is h
        (h * weights).sum().backward()
        grads.append(a.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-13, atol=1e-13)

    def on_view(t):
        h = t * 1.5
        ours(h[:, 1:5])
        return h

    assert torch.autograd.gradcheck(lambda t: ours(t * 1.5), (a,))
    assert torch.autograd.gradgradcheck(lambda t: ours(t * 1.5), (a,))
    assert torch.autograd.gradgradcheck(on_view, (a,))


@pytest.mark.parametrize("case", ["SiLU", "LeakyReLU(0.2)"])
def test_inplace_where_autograd_is_off_below_the_dispatcher(case):
    """Inside inference_mode (even with grad enabled) and below the Autograd key, torch's in-place activations
    record nothing; fastact's must not either (their C++ recording is autograd's layer, entered directly)."""
    ours = {"SiLU": lambda t: F.silu(t, inplace=True), "LeakyReLU(0.2)": lambda t: F.leaky_relu(t, 0.2, inplace=True)}
    theirs = {"SiLU": lambda t: TF.silu(t, inplace=True), "LeakyReLU(0.2)": lambda t: TF.leaky_relu(t, 0.2, inplace=True)}
    x = torch.randn(2, 3, 4, 4)
    results = []
    for f in (ours[case], theirs[case]):
        with torch.inference_mode(), torch.enable_grad():
            b = x.clone().requires_grad_()
            assert f(b) is b and b.grad_fn is None
        results.append(b)
        leaf = x.clone().requires_grad_()
        with torch._C._AutoDispatchBelowAutograd():
            assert f(leaf) is leaf
        results.append(leaf.detach())
    torch.testing.assert_close(results[0], results[2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[1], results[3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["SiLU", "LeakyReLU(0.2)", "LeakyReLU(0.2) on a view", "SiLU on a view"])
def test_inplace_backward_under_compiled_autograd(case):
    """Compiled autograd traces the in-place node's backward: the saved output (LeakyReLU, slope >= 0) is
    collected as an output; on a view the gradient comes from the view's CopySlices, which compiled autograd
    lifts into its graph (a node traced in place of being lifted was handed a placeholder there)."""
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    grads = []
    for leaky, silu in ((F.leaky_relu, F.silu), (TF.leaky_relu, TF.silu)):
        a.grad = None
        b = a * 1.0
        target = b[1:] if case.endswith("view") else b
        silu(target, inplace=True) if case.startswith("SiLU") else leaky(target, 0.2, inplace=True)
        with torch._dynamo.config.patch(compiled_autograd=True):
            torch.compile(lambda: (b * b).sum().backward(), backend="aot_eager")()
        grads.append(a.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_compiled_inplace_leaky_relu_on_an_input_that_needs_grad(slope):
    """A compiled block that starts with LeakyReLU(inplace=True), fed the output of uncompiled code (a graph
    break, or one block compiled at a time, as DCGAN-style discriminators are): the compiled code writes its
    input, so the backward must not need the input's old value. As torch's leaky_relu_, it reads the output
    (which has the input's sign for a slope >= 0)."""
    torch._dynamo.reset()
    models = []
    for leaky in (fnn.LeakyReLU(slope, inplace=True), nn.LeakyReLU(slope, inplace=True)):
        torch.manual_seed(0)
        models.append((nn.Linear(5, 6).double(), nn.Sequential(leaky, nn.Linear(6, 3)).double()))
    stem, block = models[0]
    x = torch.randn(8, 5, dtype=torch.float64)
    torch.compile(block, fullgraph=True)(stem(x)).square().sum().backward()
    torch_stem, torch_block = models[1]
    torch_block(torch_stem(x)).square().sum().backward()
    for ours, theirs in zip([*stem.parameters(), *block.parameters()],
                            [*torch_stem.parameters(), *torch_block.parameters()]):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-12, atol=1e-12)
    # inside torch.func under torch.compile: not the autograd.Function (which torch.func would not take there)
    torch._dynamo.reset()
    t = torch.randn(3, 4, dtype=torch.float64)
    grad = torch.compile(torch.func.grad(lambda u: F.leaky_relu(u * 1.0, slope, inplace=True).square().sum()),
                         fullgraph=True)(t)
    torch.testing.assert_close(grad, torch.func.grad(lambda u: TF.leaky_relu(u, slope).square().sum())(t))
    # eager, the same path: twice differentiable
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda t: F.leaky_relu(t * 1.0, slope, inplace=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a,)) and torch.autograd.gradgradcheck(fn, (a,))


# ---------------------------------------------------------------------------------------------------------
# 3. state_dict compatibility
# ---------------------------------------------------------------------------------------------------------

def test_prelu_state_dict_torch_to_fastact_and_back():
    x = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    t = nn.PReLU(8)
    _random_param(t.weight, -1.0, 1.0, seed=5)
    f = fnn.PReLU(8)
    assert list(f.state_dict()) == list(t.state_dict()) == ["weight"]
    assert f.state_dict()["weight"].shape == t.state_dict()["weight"].shape == (8,)
    f.load_state_dict(t.state_dict())  # strict
    assert torch.equal(f.weight, t.weight)
    assert torch.equal(f(x), t(x))

    f2 = fnn.PReLU(8)
    _random_param(f2.weight, -1.0, 1.0, seed=6)
    t2 = nn.PReLU(8)
    t2.load_state_dict(f2.state_dict())
    assert torch.equal(t2.weight, f2.weight)
    assert torch.equal(t2(x), f2(x))


def test_prelu_default_init_matches_torch():
    for n in (1, 8):
        f, t = fnn.PReLU(n), nn.PReLU(n)
        assert f.weight.shape == t.weight.shape and f.weight.dtype == t.weight.dtype
        assert torch.equal(f.weight, t.weight)
    assert torch.equal(fnn.PReLU(3, init=0.1).weight, nn.PReLU(3, init=0.1).weight)


def test_prelu_state_dict_inside_a_model():
    """A checkpoint of a torch model loads into its converted copy and vice versa."""
    torch.manual_seed(0)
    t = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.Conv2d(8, 4, 1))
    f = nn.Sequential(nn.Conv2d(3, 8, 3), fnn.PReLU(8), nn.Conv2d(8, 4, 1))
    f.load_state_dict(t.state_dict())
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(f(x), t(x), rtol=0, atol=0)
    t2 = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.Conv2d(8, 4, 1))
    t2.load_state_dict(f.state_dict())
    torch.testing.assert_close(t2(x), t(x), rtol=0, atol=0)


def test_swish_state_dict():
    assert list(fnn.Swish(1.5).state_dict()) == []  # a fixed beta is not state
    for n in (1, 6):
        s = fnn.Swish(0.75, learnable=True, num_parameters=n)
        sd = s.state_dict()
        assert list(sd) == ["beta"]
        assert sd["beta"].shape == (n,) and sd["beta"].dtype == torch.float32
        assert torch.equal(sd["beta"], torch.full((n,), 0.75))
        assert [name for name, _ in s.named_parameters()] == ["beta"]
        s2 = fnn.Swish(learnable=True, num_parameters=n)
        _random_param(s2.beta, 0.0, 2.0, seed=n)
        s.load_state_dict(s2.state_dict())
        assert torch.equal(s.beta, s2.beta)
        with pytest.raises(RuntimeError):  # shape mismatch is refused
            fnn.Swish(learnable=True, num_parameters=n + 1).load_state_dict(sd)
    s = fnn.Swish(learnable=True, num_parameters=3, dtype=torch.float64)
    assert s.beta.dtype == torch.float64


# ---------------------------------------------------------------------------------------------------------
# 4. convert()
# ---------------------------------------------------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, c_in: int, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c, 3, padding=1)
        self.act = nn.SiLU(inplace=True)
        self.inner = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.Mish(), nn.LeakyReLU(0.2))
        self.prelu = nn.PReLU(c)
        self.branches = nn.ModuleList([nn.Identity(), nn.LeakyReLU(-0.5)])

    def forward(self, x):
        x = self.act(self.conv(x))
        x = self.prelu(self.inner(x))
        return self.branches[1](self.branches[0](x))


def _convert_model():
    torch.manual_seed(0)
    m = nn.Sequential(
        _Block(3, 4),
        nn.Conv2d(4, 6, 3),
        nn.PReLU(),  # scalar PReLU
        nn.Mish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
        nn.SiLU(),
    )
    for mod in m.modules():
        if isinstance(mod, nn.PReLU):
            _random_param(mod.weight, -1.0, 1.0, seed=mod.num_parameters)
    return m


TORCH_TO_FASTACT = {nn.SiLU: fnn.SiLU, nn.Mish: fnn.Mish, nn.LeakyReLU: fnn.LeakyReLU, nn.PReLU: fnn.PReLU}


def test_convert_replaces_every_activation_and_keeps_parameters():
    original = _convert_model()
    work = copy.deepcopy(original)
    prelu_weights = {name: mod.weight for name, mod in work.named_modules() if isinstance(mod, nn.PReLU)}
    converted = fnn.convert(work)
    assert converted is work  # in place

    orig_modules = dict(original.named_modules())
    conv_modules = dict(converted.named_modules())
    assert orig_modules.keys() == conv_modules.keys()
    n_replaced = 0
    for name, om in orig_modules.items():
        cm = conv_modules[name]
        if type(om) in TORCH_TO_FASTACT:
            n_replaced += 1
            assert type(cm) is TORCH_TO_FASTACT[type(om)], name
            if isinstance(om, (nn.SiLU, nn.Mish, nn.LeakyReLU)):
                assert cm.inplace == om.inplace, name
            if isinstance(om, nn.LeakyReLU):
                assert cm.negative_slope == om.negative_slope, name
            if isinstance(om, nn.PReLU):
                assert cm.num_parameters == om.num_parameters
                assert cm.weight is prelu_weights[name]  # the very same Parameter object
        else:
            assert type(cm) is type(om), name
    assert n_replaced == 8
    assert not any(type(m) in TORCH_TO_FASTACT for m in converted.modules())

    # same parameters, same values
    op, cp = dict(original.named_parameters()), dict(converted.named_parameters())
    assert op.keys() == cp.keys()
    for k in op:
        assert torch.equal(op[k], cp[k]), k

    # same outputs and gradients
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = original(x1), converted(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    g = torch.randn(y1.shape, generator=torch.Generator().manual_seed(2))
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-6)
    for k in op:
        torch.testing.assert_close(cp[k].grad, op[k].grad, rtol=1e-4, atol=1e-6, msg=k)


def test_convert_replaces_a_shared_module_everywhere_by_one_module():
    act, prelu = nn.SiLU(), nn.PReLU(3)
    model = nn.Sequential(prelu, act, nn.Sequential(act, prelu))
    fnn.convert(model)
    assert type(model[0]) is fnn.PReLU and model[2][1] is model[0]  # still shared, so still one weight
    assert type(model[1]) is fnn.SiLU and model[2][0] is model[1]
    assert model[0].weight is prelu.weight


def test_convert_keeps_hooks_and_their_handles():
    """Hooks on a swapped activation (feature extraction, Grad-CAM, activation statistics) keep firing on its
    replacement, and the handles the user holds still remove them."""
    model = nn.Sequential(nn.Linear(4, 3), nn.SiLU(), nn.PReLU(3))
    fired = []
    silu_handle = model[1].register_forward_hook(lambda m, i, o: fired.append("silu output"))
    model[1].register_forward_pre_hook(lambda m, i: fired.append("silu input"))
    model[2].register_full_backward_hook(lambda m, gi, go: fired.append("prelu grad"))
    fnn.convert(model)
    assert type(model[1]) is fnn.SiLU and type(model[2]) is fnn.PReLU
    model(torch.randn(2, 4)).sum().backward()
    assert fired == ["silu input", "silu output", "prelu grad"]
    silu_handle.remove()
    fired.clear()
    model(torch.randn(2, 4))
    assert fired == ["silu input"]


def test_convert_keeps_the_modules_whole_state():
    """What utilities and users put on an activation survives the swap: a pruned or weight-normed PReLU (whose
    weight is a tensor recomputed from weight_orig/weight_g by a pre-forward hook), a buffer and an attribute
    (kept in the state_dict), and the observer submodule eager-mode quantization prepares."""
    import warnings
    import torch.nn.utils.prune as prune
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    pruned = nn.Sequential(nn.SiLU(), nn.PReLU(3))
    prune.l1_unstructured(pruned[1], "weight", amount=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm's deprecation (parametrizations are kept as
        normed = nn.Sequential(nn.PReLU(3))               # they are: a ParametrizedPReLU is not converted)
        nn.utils.weight_norm(normed[0], "weight", dim=0)
    for model in (pruned, normed):
        expected, keys = model(x), sorted(model.state_dict())
        fnn.convert(model)
        assert type(model[-1]) is fnn.PReLU
        torch.testing.assert_close(model(x), expected)
        assert sorted(model.state_dict()) == keys
    model = nn.Sequential(nn.LeakyReLU(0.2))
    model[0].register_buffer("scale", torch.ones(1))
    model[0].tag = "stem"
    fnn.convert(model)
    assert type(model[0]) is fnn.LeakyReLU and sorted(model.state_dict()) == ["0.scale"] and model[0].tag == "stem"
    observed = nn.Sequential(nn.Linear(3, 3), nn.PReLU())
    observer = nn.Identity()
    observed[1].add_module("activation_post_process", observer)
    observed[1].register_forward_hook(lambda m, i, o: m.activation_post_process(o))  # as quantization's prepare
    fnn.convert(observed)
    assert type(observed[1]) is fnn.PReLU and observed[1].activation_post_process is observer
    observed(torch.randn(2, 3))


def test_convert_keeps_training_flag():
    model = _convert_model().eval()
    converted = fnn.convert(model)
    assert all(not m.training for m in converted.modules())


@pytest.mark.parametrize("torch_module,fa_type", [
    (nn.SiLU(), fnn.SiLU), (nn.SiLU(inplace=True), fnn.SiLU), (nn.Mish(), fnn.Mish),
    (nn.LeakyReLU(0.3), fnn.LeakyReLU), (nn.PReLU(), fnn.PReLU), (nn.PReLU(4, init=0.1), fnn.PReLU),
], ids=["SiLU", "SiLU-inplace", "Mish", "LeakyReLU", "PReLU", "PReLU(4)"])
def test_convert_bare_activation(torch_module, fa_type):
    out = fnn.convert(torch_module)
    assert type(out) is fa_type
    if hasattr(torch_module, "inplace"):
        assert out.inplace == torch_module.inplace
    if isinstance(torch_module, nn.LeakyReLU):
        assert out.negative_slope == 0.3
    if isinstance(torch_module, nn.PReLU):
        assert out.weight is torch_module.weight
        assert out.num_parameters == torch_module.num_parameters
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out(x.clone()), torch_module(x.clone()), rtol=1e-5, atol=1e-6)


def test_convert_leaves_other_models_alone():
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.GELU(), nn.Sigmoid())
    types = [type(x) for x in m.modules()]
    assert fnn.convert(m) is m
    assert [type(x) for x in m.modules()] == types
    relu = nn.ReLU()
    assert fnn.convert(relu) is relu


def _hooked_forward(module):
    """What hook libraries (accelerate's add_hook_to_module) do: an instance forward wrapping the module's own."""
    old_forward = module.forward
    module.forward = lambda *args, **kwargs: old_forward(*args, **kwargs)
    return module


def _parametrized(module):
    torch.nn.utils.parametrize.register_parametrization(module, "weight", nn.Identity())
    return module


@pytest.mark.parametrize("bind, why", [
    (torch.compile, r"Sequential\.1\._orig_mod \(LeakyReLU\) as torch's module: it is compiled on its own "
                    r"\(torch\.compile\(module\)\)"),
    (lambda m: m.compile() or m, r"Sequential\.1 \(LeakyReLU\) as torch's module: it is compiled on its own "
                                 r"\(Module\.compile\(\)\)"),
    (_hooked_forward, r"Sequential\.1 \(LeakyReLU\) as torch's module: its forward was replaced on the instance"),
], ids=["torch.compile", "Module.compile", "instance forward"])
def test_convert_leaves_activations_bound_to_torchs_module_and_says_so(bind, why):
    """A module swapped in for one whose calls are bound to the torch module would never run, and later changes
    to it (an annealed slope) would be ignored: such activations are left, with a warning naming them."""
    model = nn.Sequential(nn.Linear(4, 4), bind(nn.LeakyReLU(0.1)), nn.SiLU())
    with pytest.warns(UserWarning, match=why):
        assert fnn.convert(model) is model
    left = model[1]._orig_mod if isinstance(model[1], torch._dynamo.eval_frame.OptimizedModule) else model[1]
    assert type(left) is nn.LeakyReLU and left.negative_slope == 0.1
    assert type(model[2]) is fnn.SiLU  # the rest is converted
    if bind is _hooked_forward:  # what the warning protects: a change of the module's slope is seen
        left.negative_slope = 0.5
        x = torch.randn(3, 4)
        torch.testing.assert_close(model(x), F.silu(TF.leaky_relu(model[0](x), 0.5)), rtol=0, atol=0)


def test_convert_leaves_parametrized_prelu_and_says_so():
    model = nn.Sequential(_parametrized(nn.PReLU(3)), nn.PReLU(3))
    with pytest.warns(UserWarning, match=r"Sequential\.0 \(ParametrizedPReLU\) as torch's module: it is "
                                         r"parametrized \(torch\.nn\.utils\.parametrize\)"):
        fnn.convert(model)
    assert torch.nn.utils.parametrize.is_parametrized(model[0]) and type(model[1]) is fnn.PReLU


def test_convert_of_a_compiled_model_swaps_its_activations_silently():
    """Compiling the whole model binds the model's call, not its activations': they are swapped, no warning."""
    model = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fnn.convert(model)
    assert type(model._orig_mod[1]) is fnn.LeakyReLU


def test_convert_subclass_not_replaced():
    """Only exact torch classes are swapped: a user subclass may carry its own behaviour."""
    class MySiLU(nn.SiLU):
        def forward(self, x):
            return super().forward(x) + 1

    class LibraryPReLU(nn.PReLU):  # as timm.layers.activations.PReLU: it was left without a word
        pass

    m = nn.Sequential(MySiLU(), LibraryPReLU(), nn.SiLU())
    with pytest.warns(UserWarning) as record:
        fnn.convert(m)
    assert type(m[0]) is MySiLU and type(m[1]) is LibraryPReLU and type(m[2]) is fnn.SiLU
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    assert "left Sequential.0 (" in messages[0] and "MySiLU) as it is: a subclass of torch.nn.SiLU" in messages[0]
    assert "a subclass of torch.nn.PReLU may compute something else" in messages[1]
    assert "replace it with fastact.nn.PReLU by hand" in messages[1]


# ---------------------------------------------------------------------------------------------------------
# 5. torch.compile(fullgraph=True) matches eager
# ---------------------------------------------------------------------------------------------------------

def _compile_backend() -> str:
    """Inductor needs a C++ compiler for its CPU code. This machine has g++ and inductor compiles the model
    below (~10-30 s on 2 cores), so "inductor" is used: it exercises the fake kernels, the autograd
    registration under AOTAutograd and inductor's lowering around opaque custom ops. Without a compiler,
    fall back to "aot_eager", which still traces the ops with fake tensors and runs AOTAutograd's joint graph.
    (Checked here, not at import, so that the DDP worker processes do not pay for importing inductor.)"""
    import shutil
    try:
        from torch._inductor import cpp_builder  # noqa: F401
    except Exception:
        return "aot_eager"
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return "inductor" if any(c and shutil.which(c) for c in compilers) else "aot_eager"


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.a1 = fnn.Swish(learnable=True, num_parameters=4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.a2 = fnn.Mish()
        self.c3 = nn.Conv2d(4, 6, 3, padding=1)
        self.a3 = fnn.PReLU(6)
        self.a4 = fnn.LeakyReLU(-0.5)
        self.a5 = fnn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        _random_param(self.a1.beta, 0.5, 1.5, seed=11)
        _random_param(self.a3.weight, -0.5, 0.5, seed=12)

    def forward(self, x):
        x = self.a1(self.c1(x))
        x = self.a2(self.c2(x))
        x = self.a5(self.a4(self.a3(self.c3(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_torch_compile_of_ops_on_a_permuted_slice():
    """An input that is permuted and not dense (b.t()[:, ::2]): the kernels' outputs must have the strides of
    the fake kernels' empty_like, which inductor asserts on the real tensors after each call."""
    torch._dynamo.reset()
    w = torch.randn(4, generator=torch.Generator().manual_seed(3))  # one per channel: x.size(1) = 4

    def fn(b):
        x = b.t()[:, ::2]  # (6, 4), strides (1, 12)
        ys = (F.silu(x), F.mish(x), F.leaky_relu(x, -0.5), F.prelu(x, w), F.swish(x, 1.3), F.swish(x, w))
        return torch.cat([y.reshape(-1) for y in ys]) * 2

    b = torch.randn(8, 6, generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(fn, fullgraph=True, backend=_compile_backend())
    torch.testing.assert_close(compiled(b), fn(b))
    x = b.t()[:, ::2]
    assert F.silu(x).stride() == torch.empty_like(x).stride() == TF.silu(x).stride()


@pytest.mark.parametrize("name", ["silu", "mish", "leaky", "prelu", "swish_param"])
def test_compiled_backward_with_dynamic_shapes_when_x_and_grad_differ_in_layout(name):
    """Under dynamic shapes fake tensors run the ops' decompositions rather than their fake kernels, and a
    backward's grad_input must still take x's layout, as the kernel does, where grad has another one (here x is
    transposed and its gradient contiguous): inductor asserts the strides on the real output."""
    torch._dynamo.reset()
    w = torch.rand(6, generator=torch.Generator().manual_seed(5)) + 0.5  # x = b.t(): 6 channels
    fn = {"silu": F.silu, "mish": F.mish, "leaky": lambda x: F.leaky_relu(x, -0.5), "prelu": lambda x: F.prelu(x, w),
          "swish_param": lambda x: F.swish(x, w)}[name]
    b = torch.randn(6, 4, generator=torch.Generator().manual_seed(6))
    eager_b, compiled_b = b.clone().requires_grad_(), b.clone().requires_grad_()
    (fn(eager_b.t()) * 2).sum().backward()
    compiled = torch.compile(lambda b: fn(b.t()) * 2, fullgraph=True, dynamic=True, backend=_compile_backend())
    compiled(compiled_b).sum().backward()
    torch.testing.assert_close(compiled_b.grad, eager_b.grad)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = _TinyCNN()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True, backend=_compile_backend())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye, yc = eager(xe), compiled(xc)
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
    g = torch.randn(ye.shape, generator=torch.Generator().manual_seed(2))
    ye.backward(g)
    yc.backward(g)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
    pe, pc = dict(eager.named_parameters()), dict(model.named_parameters())
    assert pe.keys() == pc.keys()
    for k in pe:
        assert pc[k].grad is not None, k
        torch.testing.assert_close(pc[k].grad, pe[k].grad, rtol=1e-4, atol=1e-5, msg=k)
    # and eager itself agrees with the same network in torch (nn.SiLU etc. + reference swish) in float64
    # (guards against eager and compiled both running the same wrong thing)
    x64 = x.double()
    m64 = copy.deepcopy(eager).double()
    h = ref.swish(m64.c1(x64), m64.a1.beta)
    h = TF.mish(m64.c2(h))
    h = TF.silu(TF.leaky_relu(TF.prelu(m64.c3(h), m64.a3.weight), -0.5))
    torch.testing.assert_close(ye.detach().double(), m64.fc(torch.flatten(m64.pool(h), 1)), rtol=1e-5, atol=1e-5)


_COMPILE_UNDER_CI = """
import importlib.util, sys, torch
if "{order}" == "inductor-first":
    import torch._inductor.lowering
import fastact, fastact.nn as fnn
if "{order}" != "inductor-first":
    assert "torch._inductor.lowering" not in sys.modules  # fastact does not import inductor
if "{order}" == "looked-up-first":  # as torch._logging.set_logs does: found, not imported
    assert importlib.util.find_spec("torch._inductor.lowering") is not None
fastact.set_compile_fusion(False)  # every op as a call to its kernel, through the fallback (not its plain form)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 6), fnn.SiLU(), fnn.Swish(1.5), fnn.Swish(learnable=True),
                            fnn.Mish(), fnn.LeakyReLU(-0.5), fnn.PReLU(6))
x = torch.randn(3, 4, requires_grad=True)
model(x).sum().backward()
expected = [x.grad] + [p.grad for p in model.parameters()]
x.grad = None
model.zero_grad()
torch.compile(model, backend="inductor", fullgraph=True)(x).sum().backward()
for got, want in zip([x.grad] + [p.grad for p in model.parameters()], expected):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
lowerings = sys.modules["torch._inductor.lowering"].lowerings
for name in ("swish", "swish_param", "mish", "leaky_relu", "prelu"):
    for op in (getattr(torch.ops.fastact, name), getattr(torch.ops.fastact, name + "_backward")):
        assert op.default in lowerings, op  # every op, backward too, runs fastact's kernel in compiled code
"""


@pytest.mark.parametrize("order", ["fastact-first", "inductor-first", "looked-up-first"])
def test_torch_compile_where_the_ci_variable_is_set(order):
    """Where CI is set (GitHub Actions sets it), inductor asserts on an implicit fallback for an op that has a
    decomposition, as fastact's ops do (for ONNX and DTensor); fastact registers its fallbacks itself, whether
    it or inductor is imported first, and when inductor's module is looked up before it is imported. A fresh
    process: the registration is process-wide."""
    if _compile_backend() != "inductor":
        pytest.skip("inductor needs a C++ compiler for CPU code")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, CI="1", TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="fastact-inductor-"),
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _COMPILE_UNDER_CI.format(order=order)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_torch_compile_of_a_changing_slope_passed_as_a_tensor_compiles_once():
    """The README's advice for a slope or beta that changes between calls (a float is a constant of the graph):
    as a tensor, twelve values run through one graph, fullgraph, with the right results."""
    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(lambda x, s: (F.prelu(x, s), F.swish(x, s)), fullgraph=True,
                             backend=_compile_backend())
    for i in range(12):
        s = 0.05 * (i - 4)
        y_prelu, y_swish = compiled(x, torch.tensor([s]))
        torch.testing.assert_close(y_prelu, TF.leaky_relu(x, s))
        torch.testing.assert_close(y_swish, ref.swish(x.double(), s).float())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # torch deprecates TorchScript
@pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")  # scripting any GraphModule
def test_torch_fx_symbolic_trace():
    """torch.fx (used by feature extractors and quantization tools) traces every module, learnable and in
    place included, into graphs of fastact ops that compute what the model computes, gradients too; the
    traced graph scripts with TorchScript, as one of torch's activations does (it held the ops' overloads,
    `torch.ops.fastact.swish.default`, which TorchScript cannot look up)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), fnn.SiLU(), nn.Linear(6, 6), fnn.Swish(learnable=True, num_parameters=6),
                          fnn.Mish(inplace=True), fnn.LeakyReLU(-0.5, inplace=True), fnn.PReLU(6), fnn.Swish(1.5),
                          fnn.SiLU(inplace=True))
    traced = torch.fx.symbolic_trace(model)
    targets = {str(n.target) for n in traced.graph.nodes if n.op == "call_function"}
    assert {"fastact.swish", "fastact.swish_param", "fastact.mish", "fastact.leaky_relu", "fastact.prelu"} <= targets, \
        targets
    scripted = torch.jit.script(traced)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    xe, xt, xs = x.clone().requires_grad_(), x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yt, ys = model(xe), traced(xt), scripted(xs)
    torch.testing.assert_close(yt, ye, rtol=0, atol=0)
    torch.testing.assert_close(ys, ye, rtol=0, atol=0)
    ye.sum().backward()
    yt.sum().backward()
    ys.sum().backward()
    torch.testing.assert_close(xt.grad, xe.grad, rtol=0, atol=0)
    torch.testing.assert_close(xs.grad, xe.grad, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # torch deprecates TorchScript
def test_torchscript_scripts_every_module():
    """torch.jit.script (deprecated by torch, still in older training code) compiles every module, learnable and
    in place included, into fastact ops; the scripted model and its saved-and-loaded copy compute what the
    eager model computes, gradients too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), fnn.SiLU(), nn.Linear(6, 6), fnn.Swish(learnable=True, num_parameters=6),
                          fnn.Mish(inplace=True), fnn.LeakyReLU(-0.5, inplace=True), fnn.PReLU(6), fnn.Swish(1.5),
                          fnn.SiLU(inplace=True), fnn.Mish(), fnn.LeakyReLU(0.2))
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    graph = str(scripted.inlined_graph)
    for op in ["swish", "swish_param", "mish", "leaky_relu", "prelu"]:
        assert f"fastact::{op}(" in graph, op
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    xe = x.clone().requires_grad_()
    ye = model(xe)
    ye.sum().backward()
    for m in (scripted, loaded):
        xs = x.clone().requires_grad_()
        ys = m(xs)
        torch.testing.assert_close(ys, ye, rtol=0, atol=0)
        ys.sum().backward()
        torch.testing.assert_close(xs.grad, xe.grad, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(m(x), ye.detach(), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # torch deprecates TorchScript
@pytest.mark.parametrize("case", list(INPLACE_CASES))
def test_torchscript_inplace_module(case):
    """A scripted in-place module overwrites its input and returns it, as torch's scripted in-place modules do:
    without grad straight through the kernel, under autograd on a non-leaf with exact gradients; a leaf that
    requires grad is refused."""
    make, reference = INPLACE_CASES[case]
    scripted = torch.jit.script(make())
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = reference(x)
    with torch.no_grad():
        work = x.clone()
        assert scripted(work) is work
    torch.testing.assert_close(work, expected)
    leaf = x.clone().requires_grad_()
    h = leaf * 2.0
    y = scripted(h)
    assert y is h
    torch.testing.assert_close(y, reference(x * 2.0))
    (grad,) = torch.autograd.grad(y.sum(), leaf)
    leaf64 = x.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(reference(leaf64 * 2.0).sum(), leaf64)
    torch.testing.assert_close(grad, expected_grad)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        scripted(x.clone().requires_grad_())


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")
def test_torchscript_scripts_user_functions():
    """A user's scripted function calling the functional API (float or tensor beta, in place or not) gives
    eager's values and gradients."""

    def block(x: torch.Tensor, beta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        y = F.swish(x, beta) + F.swish(x, 0.5) + F.silu(x) + F.mish(x) + F.prelu(x, weight)
        return F.leaky_relu(y, 0.3, inplace=True)

    scripted = torch.jit.script(block)
    g = torch.Generator().manual_seed(4)
    x, beta, weight = (torch.randn(s, dtype=torch.float64, generator=g) for s in [(2, 3, 4), (3,), (3,)])
    inputs = [t.clone().requires_grad_() for t in (x, beta, weight)]
    expected = block(*inputs)
    expected_grads = torch.autograd.grad(expected.sum(), inputs)
    inputs = [t.clone().requires_grad_() for t in (x, beta, weight)]
    got = scripted(*inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for a, b in zip(torch.autograd.grad(got.sum(), inputs), expected_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # torch deprecates TorchScript
def test_torch_jit_trace_every_module():
    """torch.jit.trace, with its check that a second trace gives the same graph (the check runs in another grad
    mode), records every module, in place included; the trace and its saved-and-loaded copy compute eager's
    values and gradients on a new batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), fnn.SiLU(inplace=True), nn.Linear(6, 6), fnn.Mish(inplace=True),
                          nn.Linear(6, 6), fnn.LeakyReLU(0.2, inplace=True), nn.Linear(6, 6),
                          fnn.LeakyReLU(-0.5, inplace=True), fnn.Swish(learnable=True, num_parameters=6), fnn.PReLU(6),
                          fnn.Mish(), nn.Linear(6, 2))
    traced = torch.jit.trace(model, (torch.randn(3, 4, generator=torch.Generator().manual_seed(1)),))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    ye = model(x)
    expected_grads = torch.autograd.grad(ye.sum(), list(model.parameters()))
    for m in (traced, loaded):
        y = m(x)
        torch.testing.assert_close(y, ye, rtol=0, atol=0)
        for a, b in zip(torch.autograd.grad(y.sum(), list(m.parameters())), expected_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _export_model() -> nn.Module:
    """A small CNN with every fastact module (parameters randomised away from their inits), in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), fnn.SiLU(), fnn.Swish(1.5), fnn.Mish(), fnn.PReLU(6), fnn.PReLU(),
                          fnn.LeakyReLU(-0.5), fnn.Swish(learnable=True, num_parameters=6), fnn.Swish(learnable=True),
                          fnn.Mish(inplace=True), fnn.LeakyReLU(0.2, inplace=True), fnn.SiLU(inplace=True))
    with torch.no_grad():
        for p in model[1:].parameters():
            p.uniform_(-1.5, 2.0)
    return model.eval()


def test_torch_export_keeps_fastact_ops():
    """torch.export (with a dynamic batch) captures the fastact ops themselves, also after the default
    decompositions, and the exported program, saved and loaded, computes what the model computes."""
    model = _export_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    program = program.run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"fastact.swish.default", "fastact.swish_param.default", "fastact.mish.default",
            "fastact.leaky_relu.default", "fastact.prelu.default"} <= targets, targets
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    x5 = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x5), model(x5), rtol=0, atol=0)


@pytest.mark.parametrize("act", ["silu", "mish", "leaky_0.1", "leaky_-0.5"])
def test_exported_inplace_activation_trains(act):
    """An exported program's module, trained: in-place activations give eager's gradients. (torch.export records
    the ops below an in-place LeakyReLU's autograd.Function, so the op must not save the x it then overwrites.)
    After run_decompositions() the in-place forms' copy_ becomes aten.copy, which torch 2.14 cannot
    differentiate, as for any model that calls copy_ (the README says so)."""
    make = {"silu": lambda: fnn.SiLU(inplace=True), "mish": lambda: fnn.Mish(inplace=True),
            "leaky_0.1": lambda: fnn.LeakyReLU(0.1, inplace=True), "leaky_-0.5": lambda: fnn.LeakyReLU(-0.5, inplace=True)}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), make[act](), nn.Linear(5, 2))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    exported = torch.export.export(copy.deepcopy(model), (x,)).module()
    model(x).square().sum().backward()
    exported(x).square().sum().backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    for k, p in exported.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], msg=k)


def test_aot_inductor_package_runs(tmp_path):
    """AOTInductor (torch.export, then compiled ahead of time into a .pt2 package of C++ code that calls the
    ops through their registered schemas) runs the model with fastact's kernels, with a dynamic batch."""
    if _compile_backend() != "inductor":
        pytest.skip("AOTInductor needs a C++ compiler")
    model = _export_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))
    runner = torch._inductor.aoti_load_package(package)
    x5 = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(runner(x5), model(x5), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_runs_in_onnxruntime():
    """torch.onnx.export lowers every fastact op to standard ONNX operators (so the exported file needs
    neither fastact nor its kernels), and onnxruntime's results match the model's, at another batch size too."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = _export_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: "batch"},), verbose=False)
    op_types = {node.op_type for node in program.model.graph}
    assert {"Sigmoid", "Mish", "LeakyRelu", "Where"} <= op_types, op_types
    assert all(node.domain in ("", "ai.onnx") for node in program.model.graph), op_types
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (2, 5):
        xb = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {session.get_inputs()[0].name: xb.numpy()})
        with torch.no_grad():
            expected = model.double()(xb.double()).float()
            model.float()
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_and_pickled_model(use_reentrant):
    """torch.utils.checkpoint recomputes the fastact layers in the backward with eager's gradients, and a
    whole model saved with torch.save loads and computes the same."""
    model = _TinyCNN()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(xe).square().sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch.utils.checkpoint.checkpoint(model, xc, use_reentrant=use_reentrant).square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=0, atol=0, msg=name)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_graph_capture_replays_forward_and_backward():
    """A training step (forward and backward through every fastact module) captured in a CUDA graph, as
    torch.compile's mode="reduce-overhead" does, replays on new data with eager's outputs and gradients: the
    kernels launch on the current stream and never synchronise with the host."""
    torch.manual_seed(0)
    model = _TinyCNN().cuda()
    eager = copy.deepcopy(model)
    static_x = torch.randn(4, 3, 8, 8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graph's documentation asks
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            model(static_x).square().sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = model(static_x)
        static_y.square().sum().backward()
    for seed in (1, 2):
        x = torch.randn(4, 3, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        static_x.copy_(x)
        graph.replay()
        eager.zero_grad(set_to_none=True)
        y = eager(x)
        y.square().sum().backward()
        torch.testing.assert_close(static_y, y, rtol=1e-6, atol=1e-6)
        for (name, p), pe in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, pe.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_autograd_traces_the_backward():
    """torch._dynamo's compiled autograd captures fastact's graph nodes (their backward ops become graph ops)
    and gives eager's gradients."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    eager = _TinyCNN()
    model = copy.deepcopy(eager)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    eager(x).square().sum().backward()

    def step(x):
        loss = model(x).square().sum()
        loss.backward()
        return loss

    try:
        with torch._dynamo.config.patch(compiled_autograd=True):  # read when torch.compile wraps step
            torch.compile(step, backend="aot_eager")(x)
    finally:
        torch._dynamo.reset()
    assert counters["compiled_autograd"]["captures"] >= 1
    for (name, pe), pc in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.skipif(not hasattr(torch.autograd.graph, "node_creation_hook"),
                    reason="torch.autograd.graph.node_creation_hook is new in torch 2.14")
def test_node_creation_hook_sees_each_node_once_complete():
    """torch.autograd.graph.node_creation_hook fires once for each fastact node, out of place and in place, with
    its edges wired (as for torch's nodes)."""
    a = torch.randn(2, 3, requires_grad=True)
    w = torch.rand(3, requires_grad=True)
    seen = []

    def hook(node):
        seen.append((node.name(), [type(f[0]).__name__ for f in node.next_functions if f[0] is not None]))

    b = a * 1.0
    c = a * 1.0
    with torch.autograd.graph.node_creation_hook(hook):
        F.prelu(b, w)
        F.mish(b)
        fnn.SiLU(inplace=True)(c)
    fastact_nodes = [entry for entry in seen if entry[0].startswith("fastact::")]
    assert fastact_nodes == [("fastact::prelu_backward", ["MulBackward0", "AccumulateGrad"]),
                             ("fastact::mish_backward", ["MulBackward0"]),
                             ("fastact::swish_backward", ["MulBackward0"])], seen


@pytest.mark.parametrize("name", ["silu", "mish", "leaky_relu", "swish", "prelu"])
def test_compiled_autograd_lifts_the_node(name):
    """Under compiled autograd fastact's node is one call in the backward graph, as torch's own nodes are, and
    gives eager's gradients for x and for a per-channel parameter, 1-D and 4-D, also where the incoming gradient
    comes from another lifted node (a view's CopySlices)."""
    from torch._dynamo.utils import counters
    fns = {"silu": lambda t, p: F.silu(t), "mish": lambda t, p: F.mish(t),
           "leaky_relu": lambda t, p: F.leaky_relu(t, 0.2), "swish": F.swish, "prelu": F.prelu}
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    for shape, view in (((2, 3, 4, 4), False), ((2, 3, 4, 4), True), ((6,), False)):
        channels = shape[1] if len(shape) > 1 else 1
        grads = []
        for compiled in (False, True):
            gen = torch.Generator().manual_seed(3)
            a = torch.randn(shape, generator=gen, requires_grad=True)
            p = (torch.rand(channels, generator=gen) + 0.5).requires_grad_()
            b = a * 1.0
            target = b[1:] if view else b
            y = fns[name](target, p)

            def step():
                (y * y).sum().backward()
            if compiled:
                torch._dynamo.reset()
                counters.clear()
                graphs.clear()
                with torch._dynamo.config.patch(compiled_autograd=True):
                    torch.compile(step, backend=backend)()
                assert counters["compiled_autograd"]["captures"] >= 1
                assert any("compiled_autograd_ops_fastact_" in code for code in graphs), graphs
            else:
                step()
            grads.append((a.grad, p.grad))
        torch._dynamo.reset()
        for eager, compiled in zip(*grads):
            if eager is None:
                assert compiled is None
            else:
                torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6, msg=f"{name} {shape} view={view}")


# ---------------------------------------------------------------------------------------------------------
# 6. Double backward through a module, against the float64 reference composition
# ---------------------------------------------------------------------------------------------------------

# The reference compositions (torch.where / sigmoid / softplus in float64). Not torch's own modules here: at
# x == 0 exactly torch's prelu/leaky_relu double backward is not symmetric (d(grad_w)/dx uses x < 0 while
# d(grad_x)/dw uses x <= 0), whereas fastact and the reference consistently take the negative side at 0.
DOUBLE_BACKWARD_CASES = {
    "Swish()": lambda x, p: ref.swish(x, 1.0),
    "Swish(1.7)": lambda x, p: ref.swish(x, 1.7),
    "Swish(-0.5)": lambda x, p: ref.swish(x, -0.5),
    "Swish(learnable,1)": lambda x, p: ref.swish(x, p[0]),
    "Swish(learnable,C)": lambda x, p: ref.swish(x, p[0]),
    "SiLU": lambda x, p: ref.swish(x, 1.0),
    "Mish": lambda x, p: ref.mish(x),
    **{f"LeakyReLU({s})": (lambda x, p, s=s: ref.leaky_relu(x, s)) for s in (0.01, 0.0, -1.0, 2.5)},
    "PReLU()": lambda x, p: ref.prelu(x, p[0]),
    "PReLU(C)": lambda x, p: ref.prelu(x, p[0]),
}


def _second_order(fn, x, params, v, u, up):
    """grad of <d/d(x, params) <fn(x), v>, (u, up)> with respect to (x, params)."""
    y = fn(x)
    first = torch.autograd.grad((y * v).sum(), [x, *params], create_graph=True)
    s = (first[0] * u).sum() + sum((gp * w).sum() for gp, w in zip(first[1:], up))
    if not s.requires_grad:  # piecewise-linear reference: the first derivative is constant in x
        return first, [torch.zeros_like(t) for t in [x, *params]]
    second = torch.autograd.grad(s, [x, *params], allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, [x, *params])]
    return first, second


@pytest.mark.parametrize("case", list(DOUBLE_BACKWARD_CASES))
def test_double_backward_matches_reference(case):
    module = MODULE_CASES[case][0]().double()
    expected_fn, expected_params = _reference_expected(DOUBLE_BACKWARD_CASES[case])(module)
    x = _make_input("4d", torch.float64)
    x64 = x.detach().clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(9)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    params = list(module.parameters())
    up = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]

    first, second = _second_order(module, x, params, v, u, up)
    first64, second64 = _second_order(expected_fn, x64, expected_params, v, u, up)
    for a, b in zip(first, first64):
        _close(a, b, TOL_PARAM_GRAD[torch.float64], f"{case} first")
    for a, b in zip(second, second64):
        _close(a, b, TOL_PARAM_GRAD[torch.float64], f"{case} second")


@pytest.mark.parametrize("case", ["Swish(learnable,C)", "Mish", "PReLU(C)", "LeakyReLU(2.5)"])
def test_gradgradcheck(case):
    """Finite differences, independent of both fastact and the reference (inputs kept off the kink at 0)."""
    module = MODULE_CASES[case][0]().double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, C, 3, generator=g, dtype=torch.float64)
    x = (x + 0.2 * x.sign()).requires_grad_(True)
    params = tuple(module.parameters())

    def fn(x, *ps):
        return torch.func.functional_call(module, dict(zip([n for n, _ in module.named_parameters()], ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


# ---------------------------------------------------------------------------------------------------------
# 7. Autocast (bfloat16 on CPU)
# ---------------------------------------------------------------------------------------------------------

AMP_ACTIVATIONS = {
    "Swish(1.5)": lambda: fnn.Swish(1.5),
    "Swish(learnable,C)": lambda: fnn.Swish(learnable=True, num_parameters=6),
    "SiLU": lambda: fnn.SiLU(),
    "Mish": lambda: fnn.Mish(),
    "LeakyReLU(-0.5)": lambda: fnn.LeakyReLU(-0.5),
    "PReLU()": lambda: fnn.PReLU(),
    "PReLU(C)": lambda: fnn.PReLU(6),
}


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("case", list(AMP_ACTIVATIONS))
def test_autocast_bfloat16(case):
    torch.manual_seed(0)
    act = AMP_ACTIVATIONS[case]()
    for p in act.parameters():
        _random_param(p, 0.3, 1.2, seed=3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), act)
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))

    ref_net = copy.deepcopy(net)
    y32 = ref_net(x)
    y32.sum().backward()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y32.detach(), rtol=4e-2, atol=4e-2)
    y.float().sum().backward()
    for (name, p), p32 in zip(net.named_parameters(), ref_net.parameters()):
        assert p.dtype == torch.float32, name  # parameters (PReLU weight, Swish beta) stay float32
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
        assert _rel_err(p.grad, p32.grad) < 5e-2, (name, _rel_err(p.grad, p32.grad))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_output_dtypes_follow_torch(dtype):
    """On a float32 input (after a BatchNorm, say) each op comes out in the dtype torch's op does: prelu is on
    autocast's lower-precision list, the others run in the input's dtype."""
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(0))
    w = torch.rand(6)
    pairs = {"prelu": (lambda t: F.prelu(t, w), lambda t: TF.prelu(t, w)),
             "silu": (F.silu, TF.silu), "mish": (F.mish, TF.mish),
             "leaky_relu": (lambda t: F.leaky_relu(t, -0.5), lambda t: TF.leaky_relu(t, -0.5))}
    for name, (ours, theirs) in pairs.items():
        with torch.autocast("cpu", dtype=dtype):
            y, expected = ours(x), theirs(x)
        assert y.dtype == expected.dtype, name
        torch.testing.assert_close(y.float(), expected.float(), rtol=1e-2, atol=1e-2, msg=name)


# ---------------------------------------------------------------------------------------------------------
# 8. DistributedDataParallel (gloo, 2 CPU processes)
# ---------------------------------------------------------------------------------------------------------

def _ddp_model():
    torch.manual_seed(123)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3), fnn.PReLU(4), fnn.Swish(learnable=True, num_parameters=4),
        nn.Conv2d(4, 4, 3), fnn.Mish(), fnn.Swish(0.8, learnable=True),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 2),
    )
    _random_param(m[1].weight, -0.5, 0.5, seed=21)
    _random_param(m[2].beta, 0.5, 1.5, seed=22)
    return m


def _ddp_batch():
    g = torch.Generator().manual_seed(77)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 2, generator=g)


def _gloo_worker(rank: int, world_size: int, port: int, out_path: str, body) -> None:
    """Runs body(rank, world_size, out_path) in one process of a gloo group, then leaves without finalizing
    Python. torch's gloo thread may still be destroying the last barrier's work, which holds earlier collectives'
    tensors; their Python objects are released under the GIL, and a thread that takes the GIL while the
    interpreter finalizes is unwound through a noexcept destructor: std::terminate, SIGABRT (~1 run in 20, in
    c10d AsyncBarrierWork's destructor; not fastact code). Exceptions still reach mp.spawn."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        body(rank, world_size, out_path)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _ddp_worker(rank: int, world_size: int, out_path: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_ddp_model())
    x, t = _ddp_batch()
    n = x.shape[0] // world_size
    xs, ts = x[rank * n:(rank + 1) * n], t[rank * n:(rank + 1) * n]
    loss = ((model(xs) - ts) ** 2).mean()
    loss.backward()
    if rank == 0:
        torch.save({k: p.grad.clone() for k, p in model.module.named_parameters()}, out_path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process():
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "grads.pt")
        mp.spawn(_gloo_worker, args=(2, _free_port(), out_path, _ddp_worker), nprocs=2, join=True)
        ddp_grads = torch.load(out_path)

    model = _ddp_model()
    x, t = _ddp_batch()
    ((model(x) - t) ** 2).mean().backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert ddp_grads.keys() == grads.keys()
    assert {"1.weight", "2.beta", "5.beta"} <= grads.keys()
    for k in grads:
        assert grads[k].abs().sum() > 0, k
        torch.testing.assert_close(ddp_grads[k], grads[k], rtol=1e-5, atol=1e-6, msg=k)


def _dtensor_cases():
    """name -> (function, parameters, placements of x to try, placement of the parameters for Shard(1))."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, 3, dtype=torch.float64, generator=g)
    w, w1 = torch.rand(6, dtype=torch.float64, generator=g) + 0.5, torch.rand(1, dtype=torch.float64, generator=g)
    cases = {
        "silu": (F.silu, []), "swish(1.5)": (lambda x: F.swish(x, 1.5), []), "mish": (F.mish, []),
        "leaky_relu(-0.3)": (lambda x: F.leaky_relu(x, -0.3), []),
        "prelu(C)": (F.prelu, [w]), "prelu(1)": (F.prelu, [w1]),
        "swish(beta C)": (F.swish, [w]), "swish(beta 1)": (F.swish, [w1]),
    }
    return x, cases


def _dtensor_worker(rank: int, world_size: int, out_path: str) -> None:
    from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor

    mesh = DeviceMesh("cpu", list(range(world_size)))
    x_full, cases = _dtensor_cases()
    results = {}
    for name, (fn, params) in cases.items():
        for dim in [0, 1, 2, None]:
            placement = [Replicate()] if dim is None else [Shard(dim)]
            # a per-channel parameter follows x sharded along the channels
            param_placement = [Shard(0)] if dim == 1 and params and params[0].numel() > 1 else [Replicate()]
            x = distribute_tensor(x_full, mesh, placement).requires_grad_()
            ps = [distribute_tensor(p, mesh, param_placement).requires_grad_() for p in params]
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                y = fn(x, *ps)
                (y * y).sum().backward()
            kernels = sorted({e.name for e in prof.events() if e.name.startswith("fastact::")})
            results[name, dim] = (y.full_tensor(), x.grad.full_tensor(), [p.grad.full_tensor() for p in ps],
                                  str(y.placements), str(x.placements), kernels)
    inplace = {}
    leaky = lambda x, inplace: F.leaky_relu(x, 0.2, inplace)  # noqa: E731
    for name, fn in [("silu", F.silu), ("mish", F.mish), ("leaky_relu", leaky)]:
        x = distribute_tensor(x_full, mesh, [Shard(0)])
        with torch.no_grad():
            assert fn(x, inplace=True) is x
        inplace[name] = x.full_tensor()
    if rank == 0:
        torch.save((results, inplace), out_path)


def test_dtensor_sharding_rules_registered_whichever_is_imported_first():
    """fastact registers DTensor sharding rules for every op and its backward when torch.distributed.tensor is
    imported, before or after fastact (torch 2.11 could not derive those of the ops with a tensor parameter from
    the decompositions, torch 2.9 not even those with a float one)."""
    code = """
import sys, torch
if sys.argv[1] == "dtensor-first":
    import torch.distributed.tensor
import fastact
from torch.distributed.tensor import DTensor
rules = DTensor._op_dispatcher.sharding_propagator.op_strategy_funcs
names = [n + s for n in ("swish", "swish_param", "mish", "leaky_relu", "prelu") for s in ("", "_backward")]
ops = [getattr(torch.ops.fastact, n).default for n in names]
assert all(op in rules for op in ops), [op in rules for op in ops]
"""
    root = Path(fastact.__file__).parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    for order in ("dtensor-first", "fastact-first"):
        r = subprocess.run([sys.executable, "-c", code, order], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (order, r.stderr[-3000:])


def test_dtensor_two_processes_shard_every_op():
    """DTensor (tensor parallelism): every op and its backward runs on the local shards of x sharded along any
    dimension (a per-channel parameter sharded with the channels) or replicated, without gathering: the output
    keeps x's placement, fastact's own kernels run, and values and gradients are the unsharded call's. In-place
    calls overwrite the DTensor."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "results.pt")
        mp.spawn(_gloo_worker, args=(2, _free_port(), out_path, _dtensor_worker), nprocs=2, join=True)
        results, inplace = torch.load(out_path)

    x_full, cases = _dtensor_cases()
    for name, fn in [("silu", F.silu), ("mish", F.mish), ("leaky_relu", lambda x: F.leaky_relu(x, 0.2))]:
        torch.testing.assert_close(inplace[name], fn(x_full), rtol=0, atol=0, msg=f"{name} in place")
    assert len(results) == 4 * len(cases)
    for (name, dim), (y, grad_x, grad_params, y_placement, x_placement, kernels) in results.items():
        fn, params = cases[name]
        x = x_full.clone().requires_grad_()
        ps = [p.clone().requires_grad_() for p in params]
        expected = fn(x, *ps)
        (expected * expected).sum().backward()
        where = f"{name} sharded on {dim}"
        assert y_placement == x_placement, where
        op = "fastact::" + {"prelu": "prelu", "leaky_relu": "leaky_relu", "mish": "mish"}.get(
            name.split("(")[0], "swish_param" if params and name.startswith("swish") else "swish")
        assert kernels == [op, op + "_backward"], (where, kernels)
        torch.testing.assert_close(y, expected.detach(), rtol=0, atol=0, msg=where)
        torch.testing.assert_close(grad_x, x.grad, rtol=0, atol=0, msg=where)
        for got, p in zip(grad_params, ps):  # per-shard partial sums, then summed across ranks
            torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-12, msg=where)


# ---------------------------------------------------------------------------------------------------------
# 9. Saved tensors: forward saves only the input (and the parameter)
# ---------------------------------------------------------------------------------------------------------

def _saved(fn, *inputs):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return saved


SAVED_CASES = {
    "silu": (lambda x, p: F.silu(x), False),
    "swish(float)": (lambda x, p: F.swish(x, 1.7), False),
    "swish(tensor,1)": (lambda x, p: F.swish(x, p), True),
    "swish(tensor,C)": (lambda x, p: F.swish(x, p), True),
    "mish": (lambda x, p: F.mish(x), False),
    "leaky_relu": (lambda x, p: F.leaky_relu(x, 0.1), False),
    "prelu(1)": (lambda x, p: F.prelu(x, p), True),
    "prelu(C)": (lambda x, p: F.prelu(x, p), True),
    # in place on a non-leaf (a leaf that requires grad is refused, as by torch): it saves the input's old value
    "SiLU(inplace)": (lambda x, p: fnn.SiLU(inplace=True)(x * 1.0), False),
}


@pytest.mark.parametrize("case", list(SAVED_CASES))
def test_forward_saves_only_input_and_parameter(case):
    fn, has_param = SAVED_CASES[case]
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    p = torch.rand(8 if case.endswith("C)") else 1, requires_grad=True)
    saved = _saved(fn, x, p)
    if case == "leaky_relu":  # one bit per element (x > 0) instead of x (tests/test_leaky_relu_mask.py)
        assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, x.numel() // 8)]
        return
    expected = [x, p] if has_param else [x]
    assert sum(t.nbytes for t in saved) == sum(t.nbytes for t in expected)
    if "inplace" not in case:  # in place, the saved tensor is a copy of x * 1.0
        assert {t.data_ptr() for t in saved} == {t.data_ptr() for t in expected}


def test_eager_compositions_save_more():
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    b = torch.rand(8, requires_grad=True)
    fa = sum(t.nbytes for t in _saved(lambda x, b: F.swish(x, b), x, b))
    eager = sum(t.nbytes for t in _saved(lambda x, b: x * torch.sigmoid(b.view(1, -1, 1, 1) * x), x, b))
    assert fa == x.nbytes + b.nbytes
    assert eager >= 2 * x.nbytes  # at least x and sigmoid(bx) (in fact also b*x's inputs)
    assert eager > fa
    mish_eager = sum(t.nbytes for t in _saved(lambda x, _: x * torch.tanh(TF.softplus(x)), x, None))
    assert mish_eager > sum(t.nbytes for t in _saved(lambda x, _: F.mish(x), x, None))


# ---------------------------------------------------------------------------------------------------------
# 10. Bad input
# ---------------------------------------------------------------------------------------------------------

def test_swish_constructor_errors():
    with pytest.raises(ValueError, match="learnable"):
        fnn.Swish(num_parameters=4)
    with pytest.raises(ValueError, match="num_parameters"):
        fnn.Swish(learnable=True, num_parameters=0)


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: fnn.PReLU(0), ValueError, r"fastact\.nn\.PReLU: num_parameters must be >= 1, got 0"),
    (lambda: fnn.PReLU(-1), ValueError, r"fastact\.nn\.PReLU: num_parameters must be >= 1, got -1"),
    (lambda: fnn.PReLU(2.5), TypeError, r"fastact\.nn\.PReLU: num_parameters must be an int, got float"),
    (lambda: fnn.PReLU(init="a"), TypeError, r"fastact\.nn\.PReLU: init must be a real number, got str"),
    (lambda: fnn.Swish(learnable=True, num_parameters=True), TypeError, r"fastact\.nn\.Swish: num_parameters"),
    (lambda: fnn.Swish(beta="a"), TypeError, r"fastact\.nn\.Swish: beta must be a real number, got str"),
    (lambda: fnn.LeakyReLU("a"), TypeError, r"fastact\.nn\.LeakyReLU: negative_slope must be a real number"),
], ids=["prelu-0", "prelu-negative", "prelu-float", "prelu-init", "swish-bool", "swish-beta", "leaky-slope"])
def test_module_constructor_errors_name_module_and_argument(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_module_constructors_take_numpy_and_tensor_numbers():
    import numpy as np
    assert fnn.PReLU(np.int64(3)).weight.shape == (3,)
    assert fnn.Swish(np.float32(1.5)).beta == 1.5
    assert fnn.LeakyReLU(torch.tensor(0.2)).negative_slope == pytest.approx(0.2)


def test_numpy_float64_numbers_under_fullgraph_compile():
    """torch.compile passes a numpy scalar to the function as a 0-d array: a float64 one is a constant of the
    graph, as a Python float (a float32 one becomes a symbolic float, which README lists as not supported)."""
    import numpy as np
    x = torch.randn(2, 8, 4)
    for fn in (F.leaky_relu, F.swish):
        compiled = torch.compile(lambda t, v, fn=fn: fn(t, v), backend="aot_eager", fullgraph=True)
        # (compiled, the ops trace as plain torch ops: not the kernels' bits)
        torch.testing.assert_close(compiled(x, np.float64(0.3)), fn(x, 0.3), rtol=2e-6, atol=1e-7)
    assert torch.equal(F.leaky_relu(x, np.array(-0.5)), F.leaky_relu(x, -0.5))  # a 0-d array, eagerly too
    for bad in (np.array([1.5]), np.array(True), np.array("0.5"), np.array(0.5 + 1j)):
        with pytest.raises(TypeError, match=r"fastact\.swish: beta must be a real number, got ndarray"):
            F.swish(x, bad)


X8 = lambda: torch.randn(2, 8, 4)  # noqa: E731


@pytest.mark.parametrize("call,op,arg", [
    # integer / bool inputs
    (lambda: F.silu(torch.arange(8)), "fastact.swish", "x"),
    (lambda: F.swish(torch.arange(8), 2.0), "fastact.swish", "x"),
    (lambda: F.swish(torch.arange(8).view(2, 4), torch.ones(4)), "fastact.swish_param", "x"),
    (lambda: F.mish(torch.arange(8)), "fastact.mish", "x"),
    (lambda: F.leaky_relu(torch.arange(8), 0.1), "fastact.leaky_relu", "x"),
    (lambda: F.prelu(torch.arange(8).view(2, 4), torch.ones(4)), "fastact.prelu", "x"),
    (lambda: F.mish(torch.ones(3, dtype=torch.bool)), "fastact.mish", "x"),
    # wrongly shaped parameter
    (lambda: F.prelu(X8(), torch.ones(3)), "fastact.prelu", "weight"),
    (lambda: F.swish(X8(), torch.ones(3)), "fastact.swish_param", "beta"),
    (lambda: F.prelu(X8(), torch.ones(8, 1)), "fastact.prelu", "weight"),
    (lambda: F.prelu(torch.randn(8), torch.ones(8)), "fastact.prelu", "weight"),
    (lambda: fnn.PReLU(3)(X8()), "fastact.prelu", "weight"),
    (lambda: fnn.Swish(learnable=True, num_parameters=3)(X8()), "fastact.swish_param", "beta"),
    # parameter of the wrong dtype
    (lambda: F.prelu(X8(), torch.ones(8, dtype=torch.float64)), "fastact.prelu", "weight"),
    (lambda: F.swish(X8(), torch.ones(1, dtype=torch.float64)), "fastact.swish_param", "beta"),
    (lambda: F.prelu(X8().double(), torch.ones(8)), "fastact.prelu", "weight"),
    (lambda: F.prelu(X8(), torch.ones(8, dtype=torch.float16)), "fastact.prelu", "weight"),
    (lambda: F.prelu(X8(), torch.ones(8, dtype=torch.int64)), "fastact.prelu", "weight"),
    (lambda: fnn.PReLU(8, dtype=torch.float64)(X8()), "fastact.prelu", "weight"),
    # the same through autograd (inputs requiring grad)
    (lambda: F.prelu(X8().requires_grad_(), torch.ones(3, requires_grad=True)), "fastact.prelu", "weight"),
    (lambda: F.swish(X8().requires_grad_(), torch.ones(8, dtype=torch.float64, requires_grad=True)),
     "fastact.swish_param", "beta"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_errors_name_op_and_argument(call, op, arg):
    with pytest.raises(RuntimeError) as info:
        call()
    msg = str(info.value)
    assert op + ":" in msg, msg
    assert f" {arg} " in msg, msg


@pytest.mark.parametrize("call,op,arg", [
    (lambda: F.prelu(X8(), None), "fastact.prelu", "weight"),
    (lambda: F.prelu(None, torch.ones(8)), "fastact.prelu", "input"),
    (lambda: F.silu(None), "fastact.silu", "input"),
    (lambda: F.silu([1.0], inplace=True), "fastact.silu", "input"),
    (lambda: F.mish(None), "fastact.mish", "input"),
    (lambda: F.swish(X8(), None), "fastact.swish", "beta"),
    (lambda: F.swish(None, 1.0), "fastact.swish", "input"),
    (lambda: F.leaky_relu(X8(), "0.1"), "fastact.leaky_relu", "negative_slope"),
    (lambda: F.leaky_relu(X8(), True), "fastact.leaky_relu", "negative_slope"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_arguments_of_the_wrong_type_name_op_and_argument(call, op, arg):
    with pytest.raises(TypeError, match=rf"{op}: {arg} must be"):
        call()


def test_number_like_slopes_are_accepted():
    x = X8()
    expected = F.leaky_relu(x, 0.25)
    for slope in (torch.tensor(0.25), 1 / 4, __import__("fractions").Fraction(1, 4)):
        torch.testing.assert_close(F.leaky_relu(x, slope), expected)


@pytest.mark.parametrize("slope,what", [(torch.tensor(True), "a bool tensor"), (torch.tensor(1 + 0j), "a complex64"),
                                        (torch.tensor(0.5, device="meta"), "a meta tensor")])
def test_tensor_slopes_that_are_not_real_numbers_name_op_and_argument(slope, what):
    """A bool tensor was taken as slope 1.0 (a Python True is refused); a meta or complex one failed with torch's
    conversion messages."""
    with pytest.raises(TypeError, match=rf"fastact\.leaky_relu: negative_slope must be a real number, got {what}"):
        F.leaky_relu(X8(), slope)


# ---------------------------------------------------------------------------------------------------------
# Import order
# ---------------------------------------------------------------------------------------------------------

def test_import_fastact_before_torch():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", "import fastact, torch; print(fastact.silu(torch.zeros(1)))"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
