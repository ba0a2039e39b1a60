"""Under torch.compile, fastact's functions and modules trace as plain torch ops (fastact/compiled.py) that the
compiler fuses with their neighbours. The forms against the kernels at edge and random values, and compiled
models against eager ones, with the setting that keeps the kernels."""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fastact
import fastact.compiled as compiled
import fastact.nn as fnn
from conftest import DEVICES

INF = math.inf
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (op, parameter values): a float, or a 1-element / per-channel tensor (4 channels)
CASES = [
    ("swish", [1.0, 1.5, -0.5, 0.0]),
    ("swish_param", [[1.0], [-2.0], [0.0], [1.0, 0.0, -1.5, 2.5]]),
    ("mish", [None]),
    ("leaky_relu", [0.01, 0.5, -0.5, 0.0, -0.0, 1.0, 3.0]),
    ("prelu", [[0.25], [0.0], [-0.0], [0.25, 0.0, -1.0, 2.0]]),
]
EDGE = [0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 9.0, -9.0, 20.0, -20.0, 43.0, -43.0, 45.0,
        -45.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 3e38, -3e38, 1e300, -1e300, INF, -INF, math.nan]
TOL = {torch.float32: (2e-6, 1e-30), torch.float64: (1e-14, 1e-300), torch.bfloat16: (1e-2, 1e-30),
       torch.float16: (2e-3, 1e-7)}


def _inputs(dtype: torch.dtype) -> torch.Tensor:
    """Edge values and random ones in (N, C=4, L) form."""
    gen = torch.Generator().manual_seed(0)
    values = torch.cat([torch.tensor(EDGE, dtype=torch.float64),
                        torch.randn(1000, generator=gen, dtype=torch.float64) * 8])
    values = values.to(dtype)
    return values[: values.numel() // 4 * 4].reshape(-1, 4, 1)


def _param(value, dtype, device):
    return value if not isinstance(value, list) else torch.tensor(value, dtype=torch.float32).to(device, dtype)


def _assert_same(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str, signed_zeros=False,
                 scale=None) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN at {(got.isnan() ^ want.isnan()).nonzero()[:5]}"
    inf = want.isinf()
    assert torch.equal(got[inf], want[inf]) and not got[~inf].isinf().any(), f"{what}: infinities differ"
    if signed_zeros:  # the forward's limits are signed zeros
        zero = want == 0
        assert torch.equal(got[zero].signbit(), want[zero].signbit()), f"{what}: zero signs"
    rtol, atol = TOL[dtype]
    rtol *= 4 if got.is_cuda else 1  # (CUDA's exp and division round differently from the CPU's)
    # relative to the terms' scale: near a zero of f' (swish: beta x = -1.28) both round the sum of ~0.3-sized terms
    scale = want.abs() if scale is None else want.abs() + scale.abs()
    bad = ((got - want).abs() > rtol * scale + atol) & want.isfinite()
    assert not bad.any(), f"{what}: {got[bad][:4].tolist()} where the kernels give {want[bad][:4].tolist()}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,values", CASES, ids=[c[0] for c in CASES])
def test_plain_forms_match_the_kernels(name, values, dtype, device):
    """The forms compiled code runs give the kernels' values, limits at +-inf and signed zeros, and their
    gradients (parameter gradients summed per channel)."""
    x = _inputs(dtype).to(device)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    grad.view(-1)[-8:] = torch.tensor([1.0, -1.0, INF, -INF, math.nan, 0.0, 2.0, -3.0], dtype=dtype)
    grad = grad.to(device)
    op, op_backward = getattr(torch.ops.fastact, name), getattr(torch.ops.fastact, f"{name}_backward")
    for value in values:
        param = () if value is None else (_param(value, dtype, device),)
        what = f"{name}({value}) {dtype}"
        _assert_same(compiled.forward(name, x, *param), op(x, *param), dtype, f"{what} forward", signed_zeros=True)
        got, want = compiled.backward(name, grad, x, *param), op_backward(grad, x, *param)
        if isinstance(want, tuple):
            _assert_same(got[0], want[0], dtype, f"{what} grad_input", scale=grad)
            finite = grad.isfinite().all() and x.isfinite().all()
            torch.testing.assert_close(got[1], want[1], rtol=1e-4 if dtype != torch.float64 else 1e-12, atol=0,
                                       equal_nan=not finite, msg=f"{what} grad_param")
        else:
            _assert_same(got, want, dtype, f"{what} grad_input", scale=grad)


def _blocks(act) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for _ in range(2):
        layers += [nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), act()]
    return nn.Sequential(*layers)


ACTIVATIONS = {
    "silu": lambda: fnn.SiLU(),
    "silu_inplace": lambda: fnn.SiLU(inplace=True),
    "swish_learnable": lambda: fnn.Swish(1.5, learnable=True, num_parameters=4),
    "mish_inplace": lambda: fnn.Mish(inplace=True),  # (on CPU, fused only where the test lifts the exception)
    "mish_kernel": lambda: fnn.Mish(),
    "leaky_inplace": lambda: fnn.LeakyReLU(0.1, inplace=True),
    "leaky_negative": lambda: fnn.LeakyReLU(-0.5),
    "prelu": lambda: fnn.PReLU(4),
}


def _step(model, x, run=None):
    """Output, input gradient and parameter gradients of model (called through run, if given)."""
    x = x.clone().requires_grad_()
    y = (run or model)(x)
    y.square().sum().backward()
    return y.detach(), x.grad, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("act", list(ACTIVATIONS), ids=list(ACTIVATIONS))
def test_compiled_models_match_eager(act, monkeypatch):
    """aot_eager runs the traced graph (forward and backward) op by op: the compiled model's output and every
    gradient match eager fastact's, with the graph holding no fastact op (but for Mish on CPU, which keeps its
    kernel; "mish_inplace" lifts that exception to test Mish's form)."""
    if act == "mish_inplace":
        monkeypatch.setattr(compiled, "_KERNEL_UNDER_COMPILE", set())
    eager = _blocks(ACTIVATIONS[act])
    model = copy.deepcopy(eager)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    got = _step(model, x, run=torch.compile(model, backend=backend))
    calls_kernels = any("fastact" in str(n.target) for gm in graphs for n in gm.graph.nodes)
    assert graphs and calls_kernels == (act == "mish_kernel")
    want = _step(eager, x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert got[2].keys() == want[2].keys()
    for k in want[2]:
        torch.testing.assert_close(got[2][k], want[2][k], rtol=1e-4, atol=1e-5, msg=k)


def _inductor_available() -> bool:
    from test_nn import _compile_backend  # (the same check)
    return _compile_backend() == "inductor"


def test_inductor_fuses_the_activation_and_the_setting_keeps_the_kernels():
    """With fusion (the default) inductor's code for a Conv-BN-activation model, forward and backward, calls no
    fastact kernel; set_compile_fusion(False) recompiles (the setting is guarded) into code that does. Both
    match eager."""
    if not _inductor_available():
        pytest.skip("inductor needs a C++ compiler for CPU code")
    from torch._inductor.utils import run_and_get_code

    eager = _blocks(lambda: fnn.PReLU(4))
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    want = _step(eager, x)
    model = copy.deepcopy(eager)
    torch._dynamo.reset()
    fn = torch.compile(lambda t: _step(model, t))
    previous = compiled.compile_fusion()
    try:
        for fusion in (True, False):
            compiled.set_compile_fusion(fusion)
            model.zero_grad()
            got, code = run_and_get_code(fn, x)
            calls_kernels = "fastact" in "\n".join(code)
            assert calls_kernels == (not fusion), f"fusion={fusion}: fastact kernels called: {calls_kernels}"
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
            for k in want[2]:
                torch.testing.assert_close(got[2][k], want[2][k], rtol=1e-4, atol=1e-5, msg=k)
    finally:
        compiled.set_compile_fusion(previous)


def test_export_keeps_the_ops():
    """torch.export records fastact's ops whatever the setting (an exported program is the model's ops)."""
    model = nn.Sequential(nn.Linear(4, 4), fnn.Mish(), fnn.PReLU(4))
    program = torch.export.export(model, (torch.randn(2, 4),))
    targets = {str(n.target) for n in program.graph.nodes}
    assert {"fastact.mish.default", "fastact.prelu.default"} <= targets, targets


def test_set_compile_fusion_takes_a_bool():
    previous = fastact.set_compile_fusion(True)
    try:
        assert fastact.compile_fusion() is True
        assert fastact.set_compile_fusion(False) is True
        assert fastact.compile_fusion() is False
        with pytest.raises(TypeError, match="fastact.set_compile_fusion: enabled must be True or False, got str"):
            fastact.set_compile_fusion("no")
        assert fastact.compile_fusion() is False
    finally:
        fastact.set_compile_fusion(previous)


@pytest.mark.parametrize("value,expected", [("off", False), ("1", True), ("maybe", True)])
def test_compile_fusion_environment_variable(value, expected):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, FASTACT_COMPILE_FUSION=value,
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", "import fastact; print(fastact.compile_fusion())"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(expected)
    assert ("FASTACT_COMPILE_FUSION='maybe'" in r.stderr) == (value == "maybe")


@pytest.mark.parametrize("call,message", [
    (lambda: fastact.prelu(torch.randn(2, 4, 3), torch.rand(3)),
     r"fastact.prelu: weight must have 1 element or one per channel \(x.size\(1\) = 4\), got shape \[3\]"),
    (lambda: fastact.prelu(torch.randn(2, 4, 3), torch.rand(2, 2)), r"fastact.prelu: weight must be 0-d or 1-d"),
    (lambda: fastact.swish(torch.randn(2, 4), torch.rand(4, dtype=torch.float64)),
     r"fastact.swish_param: beta must have the dtype of x \(Float\)"),
    (lambda: fastact.mish(torch.arange(4)), r"fastact.mish: x must be a floating-point tensor"),
    (lambda: fnn.LeakyReLU(0.1, inplace=True)(torch.arange(4).requires_grad_(False)),
     r"fastact.leaky_relu: x must be a floating-point tensor"),
], ids=["prelu-channels", "prelu-2d", "swish-dtype", "mish-int", "leaky-inplace-int"])
def test_compiled_forms_check_their_arguments(call, message):
    """Traced as plain forms, the ops still refuse what their kernels refuse, with the kernels' messages (plain
    torch ops would broadcast a 2-d weight, or compute on integers)."""
    torch._dynamo.reset()
    compiled_call = torch.compile(call, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=message):
        compiled_call()


def test_an_out_of_range_float_gets_the_ops_error_once_it_is_symbolic():
    """After two values a float slope is a symbolic input of the graph; a value float cannot hold still gets the
    op's error, as in eager mode (formatting it in the message once crashed torch.compile's tracing)."""
    torch._dynamo.reset()
    compiled_call = torch.compile(lambda t, s: fastact.leaky_relu(t, s), backend="aot_eager")
    x = torch.randn(2, 4, 3)
    compiled_call(x, 0.1)
    compiled_call(x, 0.2)
    with pytest.raises(RuntimeError, match=r"fastact\.leaky_relu: negative_slope = 1e\+39 cannot be converted to "
                                           r"float \(the compute type of Float x\) without overflow"):
        compiled_call(x, 1e39)
