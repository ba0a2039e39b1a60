"""homework Q1: Swish / Mish / leaky curves and their derivatives, through fastact's kernels and autograd.

Every curve is computed by fastact's forward kernel and every derivative by autograd through fastact's
backward kernels (second derivatives by double backward), then checked against the closed forms the homework
answer states (homework.md) and against `fastact.reference`:

  Swish-beta  f = x sigma(beta x)       df/dx = beta f + sigma(beta x)(1 - beta f)
                                        df/dbeta = x^2 sigma(beta x)(1 - sigma(beta x))
  Mish        f = x tanh(softplus x)    df/dx = Delta(x) swish(x) + f(x)/x,  Delta(x) = sech^2(softplus x)
  leaky       f = x (x > 0), alpha x    df/dx = 1 (x > 0), alpha (x < 0)

Figures, styled after the Swish paper (Ramachandran et al. 2017, fig. 4: Swish for beta = 0.1, 1, 10 and its
first derivatives) and the Mish paper (Misra 2019: Mish beside Swish, ReLU and Softplus; first and second
derivatives; the preconditioner Delta(x)):

  plot_swish.png       Swish-beta for beta = 0.1, 1, 10 and its first derivatives
  plot_mish.png        Mish, Swish, ReLU, Softplus; first and second derivatives of Mish and Swish
  plot_mish_delta.png  Delta(x), swish(x), and f'(x) = Delta(x) swish(x) + f(x)/x term by term
  plot_leaky.png       the leaky family alpha = -1, -0.5, 0, 0.5, 1 and its derivatives
  plot_checks.json     the largest |autograd - closed form| of every curve
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .checks import int_at_least, json_text, output_dir

__all__ = ["SWISH_BETAS", "LEAKY_ALPHAS", "grid", "autograd_curve", "homework_closed_forms", "curves",
           "derivative_errors", "add_arguments", "run"]

SWISH_BETAS = (0.1, 1.0, 10.0)
LEAKY_ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def grid(lo: float = -5.0, hi: float = 5.0, n: int = 1000):
    """float64 points; an even count on a symmetric range skips x = 0 (the kink of the leaky family and
    the 0/0 of Mish's f(x)/x)."""
    import torch

    return torch.linspace(lo, hi, n, dtype=torch.float64)


def autograd_curve(fn, x, second: bool = True):
    """f(x), f'(x) and (optionally) f''(x) of an elementwise fastact function, by autograd."""
    import torch

    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (dy,) = torch.autograd.grad(y.sum(), x, create_graph=second)
    d2y = None
    if second:
        (d2y,) = torch.autograd.grad(dy.sum(), x)
        d2y = d2y.detach()
    return y.detach(), dy.detach(), d2y


def homework_closed_forms():
    """The derivatives exactly as the homework answer writes them (homework.md), in plain torch."""
    import torch
    import torch.nn.functional as F

    def swish(x, beta):
        return x * torch.sigmoid(beta * x)

    def swish_dx(x, beta):
        f = swish(x, beta)
        return beta * f + torch.sigmoid(beta * x) * (1 - beta * f)

    def swish_dbeta(x, beta):
        s = torch.sigmoid(beta * x)
        return x * x * s * (1 - s)

    def mish_delta(x):
        return 1 / torch.cosh(F.softplus(x)) ** 2

    def mish_dx(x):
        f = x * torch.tanh(F.softplus(x))
        return mish_delta(x) * swish(x, 1.0) + f / x

    def leaky_dx(x, alpha):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, alpha))

    return {"swish_dx": swish_dx, "swish_dbeta": swish_dbeta, "mish_dx": mish_dx, "mish_delta": mish_delta,
            "leaky_dx": leaky_dx}


def curves(x=None) -> dict:
    """Every curve of the figures: {name: {"y", "dy", "d2y", "dy_homework", "dy_reference", ...}} as float64
    tensors, fastact's forward and autograd beside the closed forms."""
    import torch
    import torch.nn.functional as F

    import fastact
    from fastact import reference as ref

    x = grid() if x is None else x
    hw = homework_closed_forms()

    def torch_d2y(plain):
        # f'' by double autograd through plain torch ops: fastact's double backward evaluates reference.*_grad2,
        # so those closed forms would agree with it by construction
        return autograd_curve(plain, x)[2]

    out = {}
    for beta in SWISH_BETAS:
        y, dy, d2y = autograd_curve(lambda t: fastact.swish(t, beta), x)
        # df/dbeta at every point: view x as (1, N), N channels with one beta each, so autograd's gradient
        # of the per-channel beta is the elementwise derivative.
        bb = torch.full((x.numel(),), beta, dtype=x.dtype, requires_grad=True)
        (dbeta,) = torch.autograd.grad(fastact.swish(x.reshape(1, -1), bb).sum(), bb)
        out[f"swish(beta={beta:g})"] = {
            "y": y, "dy": dy, "d2y": d2y, "dy_homework": hw["swish_dx"](x, beta),
            "dy_reference": ref.swish_grad(x, beta),
            "d2y_reference": torch_d2y(lambda t: t * torch.sigmoid(beta * t)),
            "dbeta": dbeta.detach(), "dbeta_homework": hw["swish_dbeta"](x, beta),
            "dbeta_reference": ref.swish_grad_beta(x, beta)}
    y, dy, d2y = autograd_curve(fastact.mish, x)
    swish1 = fastact.swish(x, 1.0)
    out["mish"] = {"y": y, "dy": dy, "d2y": d2y, "dy_homework": hw["mish_dx"](x),
                   "dy_reference": ref.mish_grad(x),
                   "d2y_reference": torch_d2y(lambda t: t * torch.tanh(F.softplus(t))),
                   "delta": ref.mish_delta(x), "delta_homework": hw["mish_delta"](x),
                   "delta_times_swish": ref.mish_delta(x) * swish1, "f_over_x": y / x,
                   "softplus": F.softplus(x), "relu": torch.relu(x)}
    for alpha in LEAKY_ALPHAS:
        y, dy, d2y = autograd_curve(lambda t: fastact.leaky_relu(t, alpha), x)
        out[f"leaky(alpha={alpha:g})"] = {"y": y, "dy": dy, "d2y": d2y, "dy_homework": hw["leaky_dx"](x, alpha),
                                          "dy_reference": ref.leaky_relu_grad(x, alpha),
                                          "y_reference": ref.leaky_relu(x, alpha)}
    return out


def derivative_errors(data: dict) -> dict:
    """max |fastact autograd - closed form| for every pair of curves in `data`."""
    pairs = (("dy", "dy_homework"), ("dy", "dy_reference"), ("d2y", "d2y_reference"),
             ("dbeta", "dbeta_homework"), ("dbeta", "dbeta_reference"), ("delta", "delta_homework"))
    errors = {}
    for name, c in data.items():
        errors[name] = {f"{a} vs {b}": float((c[a] - c[b]).abs().max())
                        for a, b in pairs if a in c and b in c and c[a] is not None}
    return errors


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "legend.frameon": False})
    return plt


def _axes_at_origin(ax):
    ax.axhline(0, color="black", lw=0.6)
    ax.axvline(0, color="black", lw=0.6)


def _finish(plt, fig, axes, path: Path, legend_size=None, legend_loc=("upper left", "upper left")) -> None:
    """Axes through the origin, legends (at legend_loc, one per axes), and the figure written to path."""
    for ax, loc in zip(axes, legend_loc):
        _axes_at_origin(ax)
        ax.legend(loc=loc, fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_swish(data, x, path: Path) -> None:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    for beta in SWISH_BETAS:
        c = data[f"swish(beta={beta:g})"]
        a.plot(x, c["y"], lw=2, label=f"β = {beta:g}")
        b.plot(x, c["dy"], lw=2, label=f"β = {beta:g}")
    a.set(title="Swish  f(x) = x·σ(βx)", xlabel="x", ylabel="f(x)", ylim=(-2.0, 5.0))
    b.set(title="First derivatives of Swish", xlabel="x", ylabel="f′(x)", ylim=(-0.3, 1.3))
    _finish(plt, fig, (a, b), path)


def plot_mish(data, x, path: Path) -> None:
    plt = _plt()
    m, s = data["mish"], data["swish(beta=1)"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    a.plot(x, m["y"], lw=2.2, label="Mish")
    a.plot(x, s["y"], lw=1.6, label="Swish (β = 1)")
    a.plot(x, m["relu"], lw=1.4, ls="--", label="ReLU")
    a.plot(x, m["softplus"], lw=1.4, ls=":", label="Softplus")
    a.set(title="Mish  f(x) = x·tanh(softplus(x))", xlabel="x", ylabel="f(x)", ylim=(-1.0, 4.0), xlim=(-4, 4))
    b.plot(x, m["dy"], lw=2.2, label="Mish f′")
    b.plot(x, m["d2y"], lw=2.2, ls="--", label="Mish f″")
    b.plot(x, s["dy"], lw=1.4, label="Swish f′")
    b.plot(x, s["d2y"], lw=1.4, ls="--", label="Swish f″")
    b.set(title="First and second derivatives of Mish and Swish", xlabel="x", ylabel="f′(x), f″(x)",
          ylim=(-0.4, 1.3), xlim=(-4, 4))
    _finish(plt, fig, (a, b), path)


def plot_mish_delta(data, x, path: Path) -> None:
    plt = _plt()
    m, s = data["mish"], data["swish(beta=1)"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    a.plot(x, m["delta"], lw=2.2, label="Δ(x) = sech²(softplus(x))")
    a.plot(x, s["y"], lw=1.6, label="swish(x)")
    a.plot(x, s["dy"], lw=1.4, ls="--", label="swish′(x)")
    a.set(title="The preconditioner Δ(x) of Mish", xlabel="x", ylabel="Δ(x), swish(x), swish′(x)",
          ylim=(-0.5, 2.0), xlim=(-4, 4))
    b.plot(x, m["dy"], lw=2.6, color="black", alpha=0.35, label="Mish f′(x) (fastact autograd)")
    b.plot(x, m["delta_times_swish"], lw=1.6, label="Δ(x)·swish(x)")
    b.plot(x, m["f_over_x"], lw=1.6, label="f(x)/x = tanh(softplus(x))")
    b.plot(x, m["delta_times_swish"] + m["f_over_x"], lw=1.2, ls="--", color="tab:red",
           label="Δ(x)·swish(x) + f(x)/x")
    b.set(title="f′(x) = Δ(x)·swish(x) + f(x)/x", xlabel="x", ylabel="Mish f′(x) and its two terms",
          ylim=(-0.4, 1.3), xlim=(-4, 4))
    _finish(plt, fig, (a, b), path, legend_size=9)


def plot_leaky(data, x, path: Path) -> None:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    for alpha in LEAKY_ALPHAS:
        c = data[f"leaky(alpha={alpha:g})"]
        note = {1.0: " (identity)", 0.0: " (ReLU)", -1.0: " (|x|)"}.get(alpha, "")
        a.plot(x, c["y"], lw=2, label=f"α = {alpha:g}{note}")
        neg, pos = x < 0, x > 0  # a jump at 0: draw the two halves apart, no vertical segment
        line, = b.plot(x[neg], c["dy"][neg], lw=2, label=f"α = {alpha:g}")
        b.plot(x[pos], c["dy"][pos], lw=2, color=line.get_color())
    a.set(title="Leaky ReLU  f(x) = x (x > 0), αx (x ≤ 0)", xlabel="x", ylabel="f(x)", xlim=(-3, 3), ylim=(-3, 3))
    b.set(title="Derivatives: 1 for x > 0, α for x < 0", xlabel="x", ylabel="f′(x)", xlim=(-3, 3),
          ylim=(-1.2, 1.2))
    # upper left, the α = -1 and -0.5 lines (left) and the 1 line (right) would run through the legends:
    # lower right is empty in both panels (every line is f = x, or f′ = 1, for x > 0)
    _finish(plt, fig, (a, b), path, legend_size=9, legend_loc=("lower right", "lower right"))


def even_points(text: str) -> int:
    """argparse type of --points: an odd count puts x = 0 on the grid, where the homework's f(x)/x of Mish is
    0/0 (a NaN in the checks) and the leaky family has its kink."""
    n = int_at_least(2, "an even integer >= 2")(text)
    if n % 2:
        raise argparse.ArgumentTypeError(f"expected an even integer >= 2 (an odd count puts x = 0 on the grid, "
                                         f"where Mish's f(x)/x is 0/0), got {text!r}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="homework-results", help="output directory (default ./homework-results)")
    parser.add_argument("--points", type=even_points, default=1000,
                        help="points on [-5, 5]: an even number, so that x = 0 is skipped (default 1000)")


def run(args) -> int:
    out = output_dir(args.out)
    x = grid(n=args.points)
    data = curves(x)
    xs = x.numpy()
    plot_swish(data, xs, out / "plot_swish.png")
    plot_mish(data, xs, out / "plot_mish.png")
    plot_mish_delta(data, xs, out / "plot_mish_delta.png")
    plot_leaky(data, xs, out / "plot_leaky.png")
    errors = derivative_errors(data)
    (out / "plot_checks.json").write_text(json_text(
        {"grid": {"lo": -5.0, "hi": 5.0, "points": args.points, "dtype": "float64"}, "max_abs_error": errors},
        indent=1))
    worst = max(v for e in errors.values() for v in e.values())
    print("largest |fastact autograd - closed form| per curve (float64):")
    for name, e in errors.items():
        print(f"  {name:18s} " + ", ".join(f"{k}: {v:.1e}" for k, v in e.items()))
    print(f"wrote {out}/plot_swish.png, plot_mish.png, plot_mish_delta.png, plot_leaky.png, plot_checks.json")
    if worst > 1e-6:
        print(f"error: an autograd derivative differs from its closed form by {worst:.2e}")
        return 1
    return 0
