"""In-place activations (SiLU, Mish, LeakyReLU with inplace=True) as a training step runs them: on a non-leaf
tensor (the output of the layer before), forward and backward under autograd, and the forward under no_grad.
fastact's modules against torch's, timed in turns (torch.utils.benchmark medians; ratio = fastact / torch).

    python benchmarks/inplace_autograd.py [--sizes 16 20 22] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch import nn
from torch.utils.benchmark import Timer

import fastact.nn as fnn

warnings.filterwarnings("ignore")


def median_us(fn) -> float:
    return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 20, 22], help="log2 of the element counts")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    modules = {
        "SiLU": (fnn.SiLU(inplace=True), nn.SiLU(inplace=True)),
        "Mish": (fnn.Mish(inplace=True), nn.Mish(inplace=True)),
        "LeakyReLU(0.1)": (fnn.LeakyReLU(0.1, inplace=True), nn.LeakyReLU(0.1, inplace=True)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median over {args.rounds} rounds "
          f"in turns (ms)")
    print(f"{'module':<16} {'numel':>6} {'fwd+bwd fa':>11} {'torch':>8} {'ratio':>6} {'no-grad fa':>11} {'torch':>8} "
          f"{'ratio':>6}")
    for log2 in args.sizes:
        a = torch.randn(1 << log2, requires_grad=True)
        dy = torch.randn(1 << log2)

        def train(m):
            return lambda: torch.autograd.grad(m(a * 1.0), a, dy)  # a * 1.0: a non-leaf, as a layer's output

        def infer(m):
            def call():
                with torch.no_grad():
                    return m(a * 1.0)
            return call

        for name, (ours, theirs) in modules.items():
            times: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for key, fn in (("tf", train(ours)), ("tt", train(theirs)), ("if", infer(ours)), ("it", infer(theirs))):
                    times.setdefault(key, []).append(median_us(fn))
            m = {k: statistics.median(v) / 1e3 for k, v in times.items()}
            print(f"{name:<16} 2^{log2:<4} {m['tf']:>11.3f} {m['tt']:>8.3f} {m['tf'] / m['tt']:>6.2f} {m['if']:>11.3f} "
                  f"{m['it']:>8.3f} {m['if'] / m['it']:>6.2f}")


if __name__ == "__main__":
    main()
