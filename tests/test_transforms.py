"""Forward-mode AD and torch.func: jvp, grad, vjp, jacrev, jacfwd, hessian, vmap (with batching rules, also
of batched parameters) and per-sample gradients, against plain-torch references in float64."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, stack_module_state, vjp, vmap

import fastact

from conftest import DEVICES
from test_ops import CASE_IDS, CASES, TAIL_POINTS, assert_no_worse_than, mp_second_derivatives, swish_or_mish

INF = math.inf


def inputs_for(case, device, dtype=torch.float64, seed=0, shape=(3, 4, 5)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    x = (x.sign() * (x.abs() + 0.05)).to(dtype).to(device)  # away from the kink of the leaky family at 0
    p = case.make_param(x, gen, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return x, p


def fast_and_ref(case):
    """f(x, p) through fastact and through the float64 reference, with a float parameter bound in."""
    if case.tensor_param:
        return case.fast, case.ref
    return (lambda x, p=None: case.fast(x, case.param)), (lambda x, p=None: case.ref(x, case.param))


@contextlib.contextmanager
def batching_rules_only():
    """vmap without torch's per-element fallback, which would otherwise run an op without a batching rule
    once per batch element (correct, slow, and silent: its warning is off by default)."""
    previous = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(previous)


def test_vmap_fallback_switch_is_effective():
    """An op without a batching rule fails inside batching_rules_only, so the tests below can fail."""
    lib = torch.library.Library("fastact_test", "FRAGMENT")
    lib.define("double_it(Tensor x) -> Tensor")
    lib.impl("double_it", lambda x: x * 2, "CompositeExplicitAutograd")
    with batching_rules_only(), pytest.raises(RuntimeError, match="vmap fallback"):
        vmap(torch.ops.fastact_test.double_it)(torch.ones(3, 2))


# --------------------------------------------------------------------------------------------------------
# Forward-mode AD

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_forward_ad_tangent(device, case, requires_grad):
    x, p = inputs_for(case, device)
    gen = torch.Generator().manual_seed(1)
    t_x = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
    fast, ref = fast_and_ref(case)
    x.requires_grad_(requires_grad)
    with fwAD.dual_level():
        y = fast(fwAD.make_dual(x, t_x), p)
        primal, tangent = fwAD.unpack_dual(y)
        assert tangent is not None, "the output lost its tangent"
        assert torch.equal(primal.detach(), fast(x, p).detach())
    _, expected = jvp(lambda u: ref(u, p), (x.detach(),), (t_x,))
    torch.testing.assert_close(tangent.detach(), expected, rtol=1e-12, atol=1e-14)
    if case.tensor_param:  # the parameter's tangent, alone and with x's
        t_p = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(device)
        for tangents in ((None, t_p), (t_x, t_p)):
            with fwAD.dual_level():
                xd = x if tangents[0] is None else fwAD.make_dual(x, tangents[0])
                tangent = fwAD.unpack_dual(fast(xd, fwAD.make_dual(p, t_p))).tangent
            expected = jvp(ref, (x.detach(), p), (torch.zeros_like(x) if tangents[0] is None else t_x, t_p))[1]
            torch.testing.assert_close(tangent.detach(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck_forward_mode_and_batched(device, case):
    """Forward mode, forward-over-reverse and vmap over the backward (batched grads) against finite
    differences."""
    x, p = inputs_for(case, device, shape=(2, 3, 4))
    x.requires_grad_()
    if case.tensor_param:
        inputs, fn = (x, p.requires_grad_()), case.fast
    else:
        inputs, fn = (x,), (lambda t: case.fast(t, case.param))
    with batching_rules_only():
        assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True,
                                        check_batched_forward_grad=True)
        assert torch.autograd.gradgradcheck(fn, inputs, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("case", [c for c in CASES if c.tensor_param], ids=str)
def test_forward_ad_mixed_precision(case, dtype):
    """x in a half type with a float32 parameter: tangents come back in x's dtype, close to float64."""
    x, p = inputs_for(case, "cpu", dtype=dtype)
    t_x, t_p = torch.randn_like(x), torch.randn_like(p)
    y, tangent = jvp(case.fast, (x, p), (t_x, t_p))
    assert y.dtype == tangent.dtype == dtype
    _, expected = jvp(case.ref, (x.double(), p.double()), (t_x.double(), t_p.double()))
    torch.testing.assert_close(tangent.double(), expected, rtol=3 * torch.finfo(dtype).eps, atol=0.05
                               if dtype != torch.float32 else 1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_over_reverse_without_create_graph(case):
    """A backward taken inside a dual level differentiates forward even without create_graph (the tangents
    of x, of the parameter and of the incoming gradient all reach the gradient)."""
    x, p = inputs_for(case, "cpu")
    fast, ref = fast_and_ref(case)
    gen = torch.Generator().manual_seed(2)
    g, t_x, t_g = (torch.randn(x.shape, generator=gen, dtype=x.dtype) for _ in range(3))
    t_p = torch.randn(p.shape, generator=gen, dtype=p.dtype) if case.tensor_param else None

    for create_graph in (False, True):
        with fwAD.dual_level():
            xd = fwAD.make_dual(x.clone().requires_grad_(), t_x)
            pd = fwAD.make_dual(p.clone().requires_grad_(), t_p) if case.tensor_param else p
            inputs = (xd, pd) if case.tensor_param else (xd,)
            got = torch.autograd.grad(fast(xd, pd), inputs, fwAD.make_dual(g, t_g), create_graph=create_graph)
            got = [fwAD.unpack_dual(t).tangent for t in got]
        primals = (x, p, g) if case.tensor_param else (x, g)
        tangents = (t_x, t_p, t_g) if case.tensor_param else (t_x, t_g)
        if case.tensor_param:
            want = jvp(lambda a, b, c: vjp(ref, a, b)[1](c), primals, tangents)[1]
        else:
            want = jvp(lambda a, c: vjp(lambda u: ref(u, p), a)[1](c), primals, tangents)[1]
        for a, b in zip(got, want):
            assert a is not None, "the gradient lost its tangent"
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_saved_tensor_hooks_that_change_dtype(case):
    """Activations stored in float32 by a saved-tensor hook (a memory saving) for a float64 graph: the backward
    still runs and returns float64 gradients close to the exact ones."""
    x, p = inputs_for(case, "cpu")
    x.requires_grad_()
    fast, ref = fast_and_ref(case)
    g = torch.randn_like(x)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.float(), lambda t: t):
        y = fast(x, p)
    (gx,) = torch.autograd.grad(y, x, g)
    assert gx.dtype == torch.float64
    (want,) = torch.autograd.grad(ref(x, p), x, g)
    torch.testing.assert_close(gx, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# torch.func

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_torch_func_derivatives(device, case):
    x, p = inputs_for(case, device, shape=(1, 3, 2))
    fast, ref = fast_and_ref(case)

    def total(f):
        return lambda u, q: f(u, q).sum()

    for transform in (grad, jacrev, jacfwd, hessian):
        got = transform(total(fast))(x, p)
        want = transform(total(ref))(x, p)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=transform.__name__)
    v = torch.randn_like(x)
    got, want = vjp(lambda u: fast(u, p), x)[1](v), vjp(lambda u: ref(u, p), x)[1](v)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    if case.tensor_param:  # with respect to the parameter, and mixed second derivatives
        for transform in (grad, jacrev, hessian):
            got = transform(total(fast), argnums=(0, 1))(x, p)
            want = transform(total(ref), argnums=(0, 1))(x, p)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=transform.__name__)


@pytest.mark.parametrize("case", [c for c in CASES if not c.tensor_param], ids=str)
def test_torch_func_grad_at_edge_values_matches_backward(case):
    """Inside torch.func the first derivative is computed with torch ops (the fused backward cannot be
    differentiated there); it gives what the kernel gives, limits at +-inf and NaN included."""
    x = torch.tensor([0.0, 1e-300, -1e-300, 1.0, -1.0, 20.0, -20.0, 700.0, -700.0, INF, -INF, math.nan],
                     dtype=torch.float64)
    fast, _ = fast_and_ref(case)
    got = grad(lambda u: fast(u).sum())(x)
    xr = x.clone().requires_grad_()
    fast(xr).sum().backward()
    torch.testing.assert_close(got, xr.grad, rtol=1e-12, atol=1e-300, equal_nan=True)


# --------------------------------------------------------------------------------------------------------
# vmap: batching rules (no per-element fallback), batched parameters

def ref_of(case):
    return case.ref if case.tensor_param else (lambda x: case.ref(x, case.param))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("x_dim", [0, 2])
def test_vmap_forward_and_backward_ops(device, case, x_dim):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 4, 5, 2, generator=gen, dtype=torch.float64)).movedim(0, x_dim).to(device)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    name = case.name if case.name != "silu" else "swish"
    backward = getattr(torch.ops.fastact, f"{name}_backward")
    with batching_rules_only():
        if not case.tensor_param:
            param = {"silu": (1.0,), "mish": ()}.get(case.name, (case.param,))
            got = vmap(case.fast, in_dims=(x_dim, None))(x, case.param)
            want = vmap(ref_of(case), in_dims=x_dim)(x)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
            xs = x.select(x_dim, 0)  # one x for every gradient: only grad is batched
            got = vmap(lambda gg, xx: backward(gg, xx, *param), in_dims=(x_dim, None))(g, xs)
            rows = []
            for gi in g.movedim(x_dim, 0):
                xr = xs.detach().clone().requires_grad_()
                rows.append(torch.autograd.grad(ref_of(case)(xr), xr, gi)[0])
            torch.testing.assert_close(got, torch.stack(rows), rtol=1e-12, atol=1e-14)
        else:
            per_channel = case.param == "channel"
            for batched_param in (False, True):
                p = torch.rand((3, 5) if per_channel else (3, 1), generator=gen, dtype=torch.float64).to(device)
                p_dims = 0 if batched_param else None
                p_in = p if batched_param else p[0]
                got = vmap(case.fast, in_dims=(x_dim, p_dims))(x, p_in)
                want = vmap(case.ref, in_dims=(x_dim, p_dims))(x, p_in)
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
                got_gx, got_gp = vmap(backward, in_dims=(x_dim, x_dim, p_dims))(g, x, p_in)
                for i, (gi, xi) in enumerate(zip(g.movedim(x_dim, 0), x.movedim(x_dim, 0))):
                    xr = xi.detach().clone().requires_grad_()
                    pr = (p[i] if batched_param else p[0]).detach().clone().requires_grad_()
                    want_gx, want_gp = torch.autograd.grad(case.ref(xr, pr), (xr, pr), gi)
                    torch.testing.assert_close(got_gx[i], want_gx, rtol=1e-12, atol=1e-14)
                    torch.testing.assert_close(got_gp[i], want_gp, rtol=1e-10, atol=1e-12)


# (a per-channel parameter needs x with a channel dimension)
@pytest.mark.parametrize("case, x_shape", [(c, s) for c in CASES if c.tensor_param
                                           for s in [(), (4,), (2, 4), (2, 4, 3)] if c.param == "one" or len(s) >= 2],
                         ids=lambda v: f"x{list(v)}" if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("p_dim", [0, 1, -1])
@pytest.mark.parametrize("x_dim", [None, 0, -1])
def test_vmap_over_a_parameter_batched_on_any_dim(case, x_shape, p_dim, x_dim):
    """The parameter's batch dimension may be any of its dims (models stacked along dim 1, in_dims=-1), x
    batched or shared, of any rank: each sample gets its own call's values and gradients (the forward rule
    read the parameter's first row across the batch, and for x of rank < 2 returned sample 0's result for
    the whole batch, without the batch dimension)."""
    batch = 3
    gen = torch.Generator().manual_seed(11)
    n = x_shape[1] if case.param == "channel" else 1
    p = (torch.rand(batch, n, generator=gen, dtype=torch.float64) * 2 - 0.5).movedim(0, p_dim)
    x = torch.randn(batch, *x_shape, generator=gen, dtype=torch.float64) * 3
    x_in = x[0] if x_dim is None else x.movedim(0, x_dim)
    xs = [x[0] if x_dim is None else x[i] for i in range(batch)]
    ps = [p.select(p_dim, i) for i in range(batch)]

    def loss(u, w):
        return (case.fast(u, w) * torch.linspace(-1, 2, u.numel(), dtype=u.dtype).view(u.shape)).sum()

    with batching_rules_only():
        y = vmap(case.fast, in_dims=(x_dim, p_dim))(x_in, p)
        gx, gp = vmap(grad(loss, argnums=(0, 1)), in_dims=(x_dim, p_dim))(x_in, p)
    assert y.shape == (batch, *x_shape) and gx.shape == (batch, *x_shape) and gp.shape == (batch, n)
    for i in range(batch):
        xr, pr = xs[i].clone().requires_grad_(), ps[i].clone().requires_grad_()
        want = case.ref(xr, pr)
        want_gx, want_gp = torch.autograd.grad(
            (want * torch.linspace(-1, 2, xr.numel(), dtype=xr.dtype).view(xr.shape)).sum(), (xr, pr))
        torch.testing.assert_close(y[i], want.detach(), rtol=1e-12, atol=1e-14, msg=f"sample {i}")
        torch.testing.assert_close(gx[i], want_gx, rtol=1e-12, atol=1e-14, msg=f"grad x, sample {i}")
        torch.testing.assert_close(gp[i], want_gp, rtol=1e-10, atol=1e-12, msg=f"grad p, sample {i}")


@pytest.mark.parametrize("case", [c for c in CASES if c.param == "channel"], ids=str)
def test_symbolic_make_fx_of_parameter_gradients(case):
    """make_fx with symbolic shapes traces grad of a per-channel parameter (the C++ derivative formulas that
    torch.func runs read symbolic sizes: numel() raised "Cannot call numel() on tensor with symbolic sizes");
    the graph then serves other shapes with the float64 reference's gradients."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def param_grad(u, w):
        return grad(lambda w_: (case.fast(u, w_) * u).sum())(w)

    gen = torch.Generator().manual_seed(4)
    traced = make_fx(param_grad, tracing_mode="symbolic")(torch.randn(3, 4, 2, dtype=torch.float64, generator=gen),
                                                          torch.rand(4, dtype=torch.float64, generator=gen))
    for shape in [(5, 6, 3), (2, 3, 7)]:
        u = torch.randn(*shape, dtype=torch.float64, generator=gen)
        w = torch.rand(shape[1], dtype=torch.float64, generator=gen).requires_grad_()
        (want,) = torch.autograd.grad((case.ref(u, w) * u).sum(), w)
        torch.testing.assert_close(traced(u, w.detach()), want, rtol=1e-10, atol=1e-12)


INPLACE_CALLS = {
    "silu": lambda z: fastact.silu(z, inplace=True),
    "mish": lambda z: fastact.mish(z, inplace=True),
    "leaky_relu(0.2)": lambda z: fastact.leaky_relu(z, 0.2, inplace=True),
    "leaky_relu(-0.2)": lambda z: fastact.leaky_relu(z, -0.2, inplace=True),
    "LeakyReLU(0.2)": fastact.nn.LeakyReLU(0.2, inplace=True),
}


@pytest.mark.parametrize("transform", ["grad", "vjp", "jvp", "jacrev"])
@pytest.mark.parametrize("call", list(INPLACE_CALLS))
def test_inplace_on_a_tensor_captured_by_a_transform_is_refused(transform, call):
    """Writing in place a tensor the function closes over (not an input of the transform) is refused, as
    torch's in-place activations are: the C++ in-place form took it and the gradient read the new values."""
    fn = INPLACE_CALLS[call]
    z = torch.tensor([-1.0, 0.5, 2.0])

    def f(t):
        y = t * z
        fn(z)
        return y.sum() if transform == "grad" else y

    t = torch.ones(3)
    run = {"grad": lambda: grad(f)(t), "vjp": lambda: vjp(f, t)[1](torch.ones(3)),
           "jvp": lambda: jvp(f, (t,), (torch.ones(3),)), "jacrev": lambda: jacrev(f)(t)}[transform]
    with pytest.raises(RuntimeError, match="mutate a captured Tensor"):
        run()
    assert torch.equal(z, torch.tensor([-1.0, 0.5, 2.0]))


class SmallNet(nn.Module):
    def __init__(self, acts):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act1 = acts[0]
        self.fc2 = nn.Linear(8, 8)
        self.act2 = acts[1]
        self.act3 = acts[2]
        self.fc3 = nn.Linear(8, 1)

    def forward(self, x):
        return self.fc3(self.act3(self.act2(self.fc2(self.act1(self.fc1(x))))))


def fastact_net():
    torch.manual_seed(0)
    net = SmallNet([fastact.nn.Swish(beta=1.0, learnable=True, num_parameters=8), fastact.nn.PReLU(8),
                    fastact.nn.Mish()]).double()
    with torch.no_grad():
        net.act1.beta.uniform_(0.5, 1.5)
        net.act2.weight.uniform_(-0.5, 0.5)
    return net


def test_per_sample_gradients_with_vmap_of_grad():
    """The torch.func recipe (vmap of grad of functional_call) against one backward per sample."""
    net = fastact_net()
    params = {k: v.detach() for k, v in net.named_parameters()}
    data = torch.randn(5, 6, dtype=torch.float64)
    target = torch.randn(5, 1, dtype=torch.float64)

    def loss(params, x, t):
        return ((functional_call(net, params, (x.unsqueeze(0),)) - t) ** 2).sum()

    with batching_rules_only():
        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, data, target)
    for i in range(data.shape[0]):
        net.zero_grad()
        ((net(data[i:i + 1]) - target[i]) ** 2).sum().backward()
        for name, p in net.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_model_ensemble_with_vmap_over_parameters():
    """vmap over stacked parameters (a batched beta and PReLU weight) against each model alone."""
    nets = []
    for seed in range(3):
        net = fastact_net()
        with torch.no_grad():
            torch.manual_seed(seed + 10)
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        nets.append(net)
    params, buffers = stack_module_state(nets)
    base = fastact_net().to("meta")
    x = torch.randn(4, 6, dtype=torch.float64)

    def run(params, buffers, x):
        return functional_call(base, (params, buffers), (x,))

    with batching_rules_only():
        out = vmap(run, in_dims=(0, 0, None))(params, buffers, x)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out[i], net(x), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------------
# Second derivatives under torch.func: it differentiates the first-derivative formulas (csrc/autograd.h)

SECOND_ORDER_POINTS = {dtype: points + [17.5, 20.0, 25.0, 40.0, 60.0] for dtype, points in TAIL_POINTS.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, beta", [("silu", 1.0), ("swish", 2.0), ("swish", -0.5), ("mish", None)])
def test_torch_func_second_derivatives_at_least_as_good_as_torchs(dtype, name, beta):
    """grad(grad(f)) and, for a learnable beta, d2f/dx dbeta in both orders and d2f/dbeta2: torch.func takes them
    from the first derivatives' torch-op formulas, which are torch's own; element by element, against 40-digit
    references, no worse than torch's functions under the same transforms (a few ulps, where sigmoid's and tanh's
    derivatives do not cancel)."""
    x = torch.tensor(SECOND_ORDER_POINTS[dtype], dtype=dtype)
    f_xx, f_xp, f_pp = mp_second_derivatives("mish" if name == "mish" else "swish", beta, x)
    fn, torch_fn = swish_or_mish(name, beta)
    def second(f):
        return vmap(grad(grad(f)))(x)
    assert_no_worse_than(second(fn), second(torch_fn), f_xx, dtype, f"{name} f'' by grad(grad)")
    if name == "swish":
        b = torch.tensor([beta], dtype=dtype)
        def mixed(f):
            def total(t, bb):
                return f(t, bb).sum()
            def df_dbeta(t, bb):
                return grad(total, 1)(t, bb).sum()
            return {"d/dbeta df/dx": vmap(grad(grad(total, 0), 1), (0, None))(x, b).reshape(-1),
                    "d/dx df/dbeta": vmap(grad(df_dbeta, 0), (0, None))(x, b).reshape(-1),
                    "d2f/dbeta2": vmap(grad(df_dbeta, 1), (0, None))(x, b).reshape(-1)}
        ours = mixed(lambda t, bb: fastact.swish(t, bb))
        theirs = mixed(lambda t, bb: t * torch.sigmoid(bb * t))
        for what, want in (("d/dbeta df/dx", f_xp), ("d/dx df/dbeta", f_xp), ("d2f/dbeta2", f_pp)):
            assert_no_worse_than(ours[what], theirs[what], want, dtype, f"{name} {what}")


def test_torch_func_mixed_derivative_at_a_zero_beta():
    """beta = 0 (a learnable Swish initialised to x / 2): d2f/dx dbeta = x / 2 in both orders, and the limits at
    x = +-inf stay finite (beta x is taken as 0 there, not NaN)."""
    x = torch.tensor([0.7, -1.3, 2.0, 0.0], dtype=torch.float64)
    b = torch.zeros(1, dtype=torch.float64)
    def f(t, bb):
        return fastact.swish(t, bb).sum()
    for got in (jacrev(grad(f, 0), 1)(x, b).reshape(-1), jacrev(grad(f, 1), 0)(x, b).reshape(-1)):
        torch.testing.assert_close(got, x / 2, rtol=1e-15, atol=0)
    edges = torch.tensor([INF, -INF], dtype=torch.float64)
    def swish_at_zero_beta(t):
        return fastact.swish(t, b).sum()
    assert torch.equal(vmap(grad(swish_at_zero_beta))(edges), torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.equal(vmap(grad(grad(swish_at_zero_beta)))(edges), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["leaky_relu", "prelu"])
def test_gradient_penalty_through_torch_func_grad_of_leaky(name):
    """A gradient taken with torch.func.grad stays connected to x, as torch's leaky_relu_backward keeps it (with a
    zero derivative), so that a penalty on it can be differentiated again."""
    c = torch.tensor([0.5, 1.0, 1.5])
    weight = torch.tensor([0.3])
    ours = {"leaky_relu": lambda t: fastact.leaky_relu(t, -0.4), "prelu": lambda t: fastact.prelu(t, weight)}
    torchs = {"leaky_relu": lambda t: TF.leaky_relu(t, -0.4), "prelu": lambda t: TF.prelu(t, weight)}
    results = []
    for act in (ours[name], torchs[name]):
        x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
        g = grad(lambda t: (c * act(t)).sum())(x)
        penalty = (g * g).sum()
        results.append((penalty.detach(), torch.autograd.grad(penalty, x)[0]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("name, param", [("swish", 1.5), ("mish", None), ("swish_param", "channel")])
def test_backward_decompositions_compute_16_bit_inputs_in_float(name, param):
    """The backward ops' decompositions (run by DTensor and run_decompositions) evaluate the closed forms in float
    for bfloat16 x, as the kernels do: they agree with the kernels to bfloat16's rounding, where bfloat16
    arithmetic would be off by several of its ulps."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 4, 64, generator=gen) * 4).bfloat16()
    g = torch.randn(2, 4, 64, generator=gen).bfloat16()
    args = {"swish": (1.5,), "mish": (), "swish_param": (torch.linspace(-1.3, 1.7, 4).bfloat16(),)}[name]
    op = getattr(torch.ops.fastact, f"{name}_backward").default
    kernel, decomposed = op(g, x, *args), torch._decomp.decomposition_table[op](g, x, *args)
    for k, d in zip(*(t if isinstance(t, tuple) else (t,) for t in (kernel, decomposed))):
        torch.testing.assert_close(d.float(), k.float(), rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("name", ["silu", "swish", "swish_param", "mish"])
def test_torch_func_second_derivative_at_infinities_is_the_limit(name):
    """grad(grad(f)) at +-inf, and at finite x where beta x overflows, is the limit 0 (torch's own functions give
    NaN there: their formulas multiply inf by 0 in the branch a where() leaves out, and its gradient keeps it)."""
    f = {"silu": fastact.silu, "swish": lambda t: fastact.swish(t, 2.0), "mish": fastact.mish,
         "swish_param": lambda t: fastact.swish(t, torch.tensor([2.0]))}[name]
    x = torch.tensor([INF, -INF, 3e38, -3e38])
    assert torch.equal(vmap(grad(grad(f)))(x), torch.zeros(4))


def test_vmap_of_a_wrong_per_sample_parameter_is_the_ops_error_for_one_sample():
    """Folded into the channels, a wrong per-sample weight was reported in sizes the caller never passed
    ("x.size(1) = 15, got shape [35]"), and a 2-d per-sample weight, which the op refuses, was accepted."""
    x = torch.randn(5, 2, 3, 4)
    with pytest.raises(RuntimeError, match=r"fastact\.prelu: weight must have 1 element or one per channel "
                                           r"\(x\.size\(1\) = 3\), got shape \[7\]"):
        torch.vmap(fastact.prelu)(x, torch.rand(5, 7))
    with pytest.raises(RuntimeError, match=r"fastact\.prelu: weight must be 0-d or 1-d .*got shape \[1, 3\]"):
        torch.vmap(fastact.prelu)(x, torch.rand(5, 1, 3))
    with pytest.raises(RuntimeError, match=r"fastact\.swish\w*: beta must be 0-d or 1-d .*got shape \[1, 3\]"):
        torch.func.vmap(torch.func.grad(lambda x, b: fastact.swish(x, b).sum(), argnums=1))(x, torch.rand(5, 1, 3))
    # the right ones still work, and equal the loop over samples
    w = torch.rand(5, 3)
    torch.testing.assert_close(torch.vmap(fastact.prelu)(x, w), torch.stack([fastact.prelu(a, b) for a, b in zip(x, w)]))
