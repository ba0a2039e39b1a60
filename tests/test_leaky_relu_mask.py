"""LeakyReLU's saved sign mask: under autograd a plain eager LeakyReLU on a contiguous CPU tensor saves one bit per
element (x > 0) instead of x (csrc/autograd.h, SignMaskNode). The bits against x, the gradients against torch's
and against the node that saves x, bit for bit, and every way a graph is used: double and triple backward,
gradcheck, forward-over-reverse, batched gradients, saved-tensor hooks, compiled autograd, checkpointing."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from torch.utils.checkpoint import checkpoint

import fastact
from fastact.kernel_bench import saved_bytes

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SLOPES = [0.2, -0.5, 0.0, 1.0, 2.5]
# element counts around the kernels' steps (8 bits a byte, 16/32 elements a vector, 64-element ranges, 32768 a
# thread's piece) and the tensor's end
SIZES = [1, 7, 8, 9, 31, 33, 63, 64, 65, 1000, 2 * 32768 + 77]


@contextlib.contextmanager
def saves_mask(enabled: bool):
    previous = fastact.set_leaky_relu_saves_mask(enabled)
    try:
        yield
    finally:
        fastact.set_leaky_relu_saves_mask(previous)


def packed_bits(x: torch.Tensor) -> torch.Tensor:
    """x > 0 in row-major order, eight to a byte, least significant bit first (numpy's bitorder='little')."""
    bits = (x.reshape(-1) > 0).to(torch.uint8)
    bits = torch.cat([bits, bits.new_zeros(-bits.numel() % 8)]).view(-1, 8)
    return (bits << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """t's bits, every NaN made one NaN (the kernels' NaN payloads differ between their vector bodies and tails)."""
    t = torch.where(t.isnan(), torch.full_like(t, math.nan), t)
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def with_edge_values(x: torch.Tensor) -> torch.Tensor:
    """x with 0, -0, +-inf, NaN, the smallest subnormals and +-1 spread over it."""
    tiny = torch.finfo(x.dtype).tiny * torch.finfo(x.dtype).eps  # the smallest subnormal
    edges = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, tiny, -tiny, 1.0, -1.0], dtype=torch.float64)
    flat = x.detach().reshape(-1).clone()
    picks = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: min(flat.numel(), 64)]
    flat[picks] = edges[torch.arange(picks.numel()) % edges.numel()].to(x.dtype)
    return flat.view(x.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel", SIZES)
def test_the_saved_bits_are_x_greater_than_zero(dtype, numel):
    x = with_edge_values(torch.randn(numel, dtype=torch.float64).to(dtype)).requires_grad_()
    y = fastact.leaky_relu(x, 0.2)
    node = y.grad_fn
    assert type(node).__name__ == "FastactLeakyReluMaskBackward" and type(node) is fastact._C.FastactLeakyReluMaskBackward
    assert node.name() == "fastact::leaky_relu_backward" and node._saved_negative_slope == 0.2
    assert node.next_functions[0][0].variable is x
    mask = node._saved_mask
    assert mask.dtype == torch.uint8 and mask.shape == ((numel + 7) // 8,)
    assert torch.equal(mask, packed_bits(x.detach())), "bits differ from x > 0"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", SLOPES)
def test_gradients_are_torchs_and_the_saved_x_nodes_bit_for_bit(dtype, slope):
    gen = torch.Generator().manual_seed(1)
    for numel in (1, 63, 1000, 2 * 32768 + 77):
        x = with_edge_values(torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype))
        dy = with_edge_values(torch.randn(numel, generator=gen, dtype=torch.float64).to(dtype) * 3)
        got = {}
        for mode in (True, False):
            with saves_mask(mode):
                xr = x.clone().requires_grad_()
                y = fastact.leaky_relu(xr, slope)
                assert type(y.grad_fn).__name__ == ("FastactLeakyReluMaskBackward" if mode else "FastactLeakyReluBackward")
                (got[mode],) = torch.autograd.grad(y, xr, dy)
        xr = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(TF.leaky_relu(xr, slope), xr, dy)
        assert torch.equal(bits_of(got[True]), bits_of(got[False])), (dtype, slope, numel)
        torch.testing.assert_close(got[True], want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512", "avx512_bf16"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_cpu_build_writes_the_same_bits_and_gradients(capability, dtype):
    if capability not in fastact.supported_cpu_capabilities():
        pytest.skip(f"this CPU does not run the {capability} build")
    gen = torch.Generator().manual_seed(2)
    x = with_edge_values(torch.randn(5000, generator=gen, dtype=torch.float64).to(dtype)).requires_grad_()
    dy = torch.randn(5000, generator=gen, dtype=torch.float64).to(dtype)
    previous = fastact.set_cpu_capability(capability)
    try:
        y = fastact.leaky_relu(x, -0.3)
        mask = y.grad_fn._saved_mask.clone()
        (gx,) = torch.autograd.grad(y, x, dy)
    finally:
        fastact.set_cpu_capability(previous)
    assert torch.equal(mask, packed_bits(x.detach()))
    (want,) = torch.autograd.grad(TF.leaky_relu(x, -0.3), x, dy)
    torch.testing.assert_close(gx, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(y, TF.leaky_relu(x.detach(), -0.3), rtol=0, atol=0, equal_nan=True)


def test_it_keeps_one_bit_per_element():
    x = torch.randn(1 << 16, requires_grad=True)
    with saves_mask(True):
        kept = saved_bytes(lambda: fastact.leaky_relu(x, 0.1))
    with saves_mask(False):
        kept_x = saved_bytes(lambda: fastact.leaky_relu(x, 0.1))
    assert kept == x.numel() // 8 and kept_x == x.numel() * 4
    assert saved_bytes(lambda: TF.leaky_relu(x, 0.1)) == kept_x


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "no_grad_needed", "in_place", "tangent", "mode"])
def test_elsewhere_the_node_saves_x(layout):
    """The mask is for plain eager calls on contiguous tensors; other calls keep the node that saves x."""
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    if layout == "channels_last":
        y = fastact.leaky_relu(x.contiguous(memory_format=torch.channels_last), 0.2)
    elif layout == "transposed":
        y = fastact.leaky_relu(x.transpose(1, 3), 0.2)
    elif layout == "no_grad_needed":
        y = fastact.leaky_relu(x.detach(), 0.2)
        assert y.grad_fn is None
        return
    elif layout == "in_place":
        y = fastact.leaky_relu(x * 1, 0.2, inplace=True)
    elif layout == "tangent":
        with fwAD.dual_level():
            y = fastact.leaky_relu(fwAD.make_dual(x, torch.ones_like(x)), 0.2)
    else:
        from torch.utils._python_dispatch import TorchDispatchMode

        class Passthrough(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Passthrough():
            y = fastact.leaky_relu(x, 0.2)
    assert type(y.grad_fn).__name__ == "FastactLeakyReluBackward"
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, torch.where(x > 0, 1.0, 0.2))


def test_double_and_triple_backward_match_torch():
    """The gradient of a gradient reaches the incoming gradient and, with torch's zero derivative, x."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    g0 = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    w0, v = torch.randn(2, 6, 7, generator=gen, dtype=torch.float64)
    results = []
    for leaky in (lambda t: fastact.leaky_relu(t, -0.7), lambda t: TF.leaky_relu(t, -0.7)):
        x, g, w = (t.clone().requires_grad_() for t in (x0, g0, w0))
        (gx,) = torch.autograd.grad(leaky(x), x, g, create_graph=True)
        # d(gx . w)/dx is zero but defined (no allow_unused needed); d/dg is the mask's map of w, and so on
        dx, dg = torch.autograd.grad(gx, (x, g), w, create_graph=True)
        dx_again, dw = torch.autograd.grad(dg, (x, w), v)
        results.append([t.detach() for t in (gx, dx, dg, dx_again, dw)])
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)
    assert results[0][1].abs().sum() == 0 and results[0][3].abs().sum() == 0


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(4, 9, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()  # away from the kink, where the numerical derivative is exact
    for slope in (0.3, -1.2):
        f = lambda t: fastact.leaky_relu(t, slope)  # noqa: E731
        assert type(f(x).grad_fn).__name__ == "FastactLeakyReluMaskBackward"
        assert torch.autograd.gradcheck(f, (x,), check_batched_grad=True, check_forward_ad=False)
        assert torch.autograd.gradgradcheck(f, (x,), check_batched_grad=True, check_fwd_over_rev=True)


def test_batched_gradients_and_forward_over_reverse():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, generator=gen, requires_grad=True)
    dys = torch.randn(4, 3, 5, generator=gen)
    (got,) = torch.autograd.grad(fastact.leaky_relu(x, 0.4), x, dys, is_grads_batched=True)
    (want,) = torch.autograd.grad(TF.leaky_relu(x, 0.4), x, dys, is_grads_batched=True)
    assert torch.equal(got, want)
    # forward-over-reverse: the gradient's tangent from the incoming gradient's tangent
    dy, t = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    tangents = []
    for leaky in (fastact.leaky_relu, TF.leaky_relu):
        y = leaky(x, 0.4)
        with fwAD.dual_level():
            (gx,) = torch.autograd.grad(y, x, fwAD.make_dual(dy, t))
            tangents.append(fwAD.unpack_dual(gx).tangent)
    assert tangents[0] is not None and torch.equal(tangents[0], tangents[1])


def test_saved_tensor_hooks_see_the_mask_and_may_change_its_dtype():
    x = torch.randn(100, dtype=torch.float64, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.dtype) or t.float(), lambda t: t):
        y = fastact.leaky_relu(x, 0.1)
    assert packed == [torch.uint8]
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert gx.dtype == torch.float64 and torch.equal(gx, torch.where(x > 0, torch.ones_like(x), torch.full_like(x, 0.1)))
    # hooks on the one saved value, and the saved mask freed after the backward
    y = fastact.leaky_relu(x, 0.1)
    calls = []
    y.grad_fn._raw_saved_mask.register_hooks(lambda t: calls.append("pack") or t.clone(), lambda t: calls.append("unpack") or t)
    y.sum().backward()
    assert calls == ["pack", "unpack"]
    with pytest.raises(RuntimeError, match="after they have already been freed"):
        y.grad_fn._saved_mask  # noqa: B018


def test_checkpointing_recomputes_the_mask():
    gen = torch.Generator().manual_seed(5)
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(8, 16, generator=gen)
    grads = []
    for use_checkpoint in (False, True):
        lin.zero_grad()
        f = lambda t: fastact.leaky_relu(lin(t), 0.2).sum()  # noqa: E731
        out = checkpoint(f, x, use_reentrant=False) if use_checkpoint else f(x)
        out.backward()
        grads.append(lin.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_compiled_autograd_lifts_the_mask_node():
    from torch._dynamo.utils import counters
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    grads = []
    for compiled in (False, True):
        a = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6), requires_grad=True)
        y = fastact.leaky_relu(a * 1.0, -0.2)
        assert type(y.grad_fn).__name__ == "FastactLeakyReluMaskBackward"

        def step():
            (y * y).sum().backward()
        if compiled:
            torch._dynamo.reset()
            counters.clear()
            with torch._dynamo.config.patch(compiled_autograd=True):
                torch.compile(step, backend=backend)()
            torch._dynamo.reset()
            assert counters["compiled_autograd"]["captures"] >= 1
            assert any("fastact_leaky_relu_mask_backward" in code for code in graphs), graphs
        else:
            step()
        grads.append(a.grad)
    assert torch.equal(grads[0], grads[1])


def test_the_mask_backward_op_checks_its_arguments():
    op = torch.ops.fastact.leaky_relu_mask_backward
    g = torch.randn(3, 5)
    mask = packed_bits(torch.randn(3, 5))
    torch.testing.assert_close(op(g, mask, 0.5), torch.where(_bits_as_bool(mask, g), g, g * 0.5))
    with pytest.raises(RuntimeError, match=r"fastact.leaky_relu_mask_backward: mask must be a 1-d uint8 tensor of .* = 2 bytes"):
        op(g, mask[:1], 0.5)
    with pytest.raises(RuntimeError, match=r"fastact.leaky_relu_mask_backward: mask must be a 1-d uint8 .* got Float"):
        op(g, mask.float(), 0.5)
    with pytest.raises(RuntimeError, match=r"fastact.leaky_relu_mask_backward: grad must be a floating-point tensor"):
        op(g.long(), mask, 0.5)
    # a non-contiguous grad is read in row-major order, the mask's
    gt = torch.randn(5, 3).t()
    torch.testing.assert_close(op(gt, mask, 0.5), torch.where(_bits_as_bool(mask, gt), gt, gt * 0.5))
    args = (g.clone().requires_grad_(), mask, 0.5)
    torch.library.opcheck(op.default, args)


def _bits_as_bool(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    bits = (mask.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[: like.numel()].bool().view(like.shape)


def test_the_switch_takes_only_booleans():
    with pytest.raises(TypeError, match="enabled must be True or False"):
        fastact.set_leaky_relu_saves_mask(1)
    assert fastact.leaky_relu_saves_mask() is True


def test_x_may_be_written_after_the_forward():
    """The node keeps x's signs, not x: writing x in place after the forward leaves the gradient as it was (torch's
    leaky_relu, which saves x, refuses the backward then)."""
    a = torch.randn(50, requires_grad=True)
    x = a * 1.0
    y = fastact.leaky_relu(x, 0.3)
    x.mul_(-1.0)
    y.sum().backward()
    assert torch.equal(a.grad, torch.where(a > 0, torch.ones_like(a), torch.full_like(a, 0.3)))
    x = a * 1.0
    y = TF.leaky_relu(x, 0.3)
    x.mul_(-1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
