"""Per-call cost of autograd on a small tensor, where the kernel is negligible: fastact against torch's op,
forward with a graph and forward+backward, timed in turns (torch.utils.benchmark medians).

    python benchmarks/autograd_overhead.py [--numel 1024] [--rounds 5]
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {x.numel()} elements, "
          f"median over {args.rounds} rounds in turns (us)")
    print(f"{'op':<12} {'fwd fastact':>12} {'fwd torch':>10} {'ratio':>6} {'f+b fastact':>12} {'f+b torch':>10} "
          f"{'ratio':>6}")
    for name, (ours, theirs) in pairs.items():
        times = {k: [] for k in ("fo", "ft", "bo", "bt")}
        for _ in range(args.rounds):  # in turns, so that a slow spell of the machine hits both
            times["fo"].append(median_us(lambda: ours(x)))
            times["ft"].append(median_us(lambda: theirs(x)))
            times["bo"].append(median_us(lambda: ours(x).backward(g)))
            times["bt"].append(median_us(lambda: theirs(x).backward(g)))
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:<12} {m['fo']:>12.1f} {m['ft']:>10.1f} {m['fo'] / m['ft']:>6.2f} {m['bo']:>12.1f} "
              f"{m['bt']:>10.1f} {m['bo'] / m['bt']:>6.2f}")


if __name__ == "__main__":
    main()
