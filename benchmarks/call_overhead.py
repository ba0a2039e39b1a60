"""Per-call cost on a small tensor, where the kernel is negligible: fastact against torch's op, a forward
without autograd, a forward that records a graph, and forward+backward, timed in turns (torch.utils.benchmark
medians).

    python benchmarks/call_overhead.py [--numel 1024] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import warnings

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import fastact

warnings.filterwarnings("ignore")


def median_us(fn) -> float:
    return Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.2).median * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    x = torch.randn(1, 8, args.numel // 8, requires_grad=True)
    g = torch.randn_like(x)
    w = torch.rand(8, requires_grad=True)
    pairs = {
        "silu": (fastact.silu, F.silu),
        "mish": (fastact.mish, F.mish),
        "leaky_relu": (lambda t: fastact.leaky_relu(t, 0.1), lambda t: F.leaky_relu(t, 0.1)),
        "prelu": (lambda t: fastact.prelu(t, w), lambda t: F.prelu(t, w)),
    }

    def no_grad(f):
        def call():
            with torch.no_grad():
                return f(x)
        return call

    passes = {"no grad": no_grad, "with graph": lambda f: lambda: f(x), "fwd+bwd": lambda f: lambda: f(x).backward(g)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {x.numel()} elements, "
          f"median over {args.rounds} rounds in turns (us; ratio = fastact / torch)")
    print(f"{'op':<12}" + "".join(f" {p + ' fa':>14} {'torch':>7} {'ratio':>5}" for p in passes))
    for name, (ours, theirs) in pairs.items():
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):  # in turns, so that a slow spell of the machine hits both
            for p, make in passes.items():
                for who, f in (("fastact", ours), ("torch", theirs)):
                    times.setdefault((p, who), []).append(median_us(make(f)))
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:<12}" + "".join(f" {m[p, 'fastact']:>14.2f} {m[p, 'torch']:>7.2f} "
                                      f"{m[p, 'fastact'] / m[p, 'torch']:>5.2f}" for p in passes))


if __name__ == "__main__":
    main()
