"""LeakyReLU under autograd with the saved sign mask against the node that saves x, and torch's F.leaky_relu, side
by side in one run: median time of forward+backward and of the backward alone, and the bytes kept for backward.

    PYTHONPATH=. python benchmarks/leaky_mask_ab.py [--sizes 20 24] [--threads 2]
"""
from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as TF
from torch.utils import benchmark

import fastact
from fastact.kernel_bench import saved_bytes


def timer(fn, threads: int, min_run_time: float) -> float:
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time).median


def with_mask(enabled: bool, fn):
    def call():
        previous = fastact.set_leaky_relu_saves_mask(enabled)
        try:
            return fn()
        finally:
            fastact.set_leaky_relu_saves_mask(previous)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 24], help="log2 of the element counts")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--slope", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per row (shuffled order)")
    parser.add_argument("--min-run-time", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    impls = {"fastact (mask)": (True, fastact.leaky_relu), "fastact (saves x)": (False, fastact.leaky_relu),
             "torch": (True, TF.leaky_relu)}
    print(f"torch {torch.__version__}, {args.threads} threads, kernels {fastact.cpu_capability()}, "
          f"slope {args.slope}")
    print(f"{'dtype':9} {'numel':>6} {'pass':8} " + " ".join(f"{name:>18}" for name in impls)
          + "   mask/x  mask/torch")
    order = random.Random(0)
    for dtype in args.dtypes:
        for log2 in args.sizes:
            x = torch.randn(1 << log2, dtype=getattr(torch, dtype), requires_grad=True)
            dy = torch.randn_like(x)
            rows = {"fwd+bwd": {}, "bwd": {}}
            graphs = {}
            for name, (mask, f) in impls.items():
                graphs[name] = with_mask(mask, lambda f=f: f(x, args.slope))()
            step = {name: with_mask(mask, lambda f=f: torch.autograd.grad(f(x, args.slope), x, dy))
                    for name, (mask, f) in impls.items()}
            back = {name: (lambda y=graphs[name]: torch.autograd.grad(y, x, dy, retain_graph=True)) for name in impls}
            samples = {(p, n): [] for p in rows for n in impls}
            for _ in range(args.rounds):  # interleaved, each round in a new order
                turns = [(p, n) for p in rows for n in impls]
                order.shuffle(turns)
                for p, n in turns:
                    samples[p, n].append(timer((step if p == "fwd+bwd" else back)[n], args.threads,
                                               args.min_run_time / args.rounds))
            for p in rows:
                med = {n: sorted(samples[p, n])[len(samples[p, n]) // 2] for n in impls}
                print(f"{dtype:9} 2^{log2:<4} {p:8} " + " ".join(f"{med[n] * 1e3:15.3f} ms" for n in impls)
                      + f"   {med['fastact (mask)'] / med['fastact (saves x)']:6.2f}  "
                      + f"{med['fastact (mask)'] / med['torch']:6.2f}")
            kept = {n: with_mask(m, lambda f=f: saved_bytes(lambda: f(x, args.slope)))() for n, (m, f) in impls.items()}
            print(f"{'':9} {'':6} {'saved':8} " + " ".join(f"{kept[n] / 1e6:15.3f} MB" for n in impls))


if __name__ == "__main__":
    main()
