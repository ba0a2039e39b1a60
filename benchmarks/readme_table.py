"""Print the README's results tables (markdown) from `fastact-bench kernels --json` files, so that every
number in README.md is read from the recorded run rather than copied by hand.

    python benchmarks/readme_table.py benchmarks/results/cpu/cpu_kernels.json
    python benchmarks/readme_table.py benchmarks/results/gpu/gpu_kernels.json \
        --compile benchmarks/results/gpu/gpu_compile.json
"""
from __future__ import annotations

import argparse
import json

NAMES = {
    "swish": "SiLU",
    "swish_beta": "Swish-beta learnable (scalar)",
    "swish_beta_pc": "Swish-beta learnable (per channel)",
    "mish": "Mish",
    "leaky_0.5": "LeakyReLU(0.5)",
    "leaky_-0.5": "LeakyReLU(-0.5)",
    "prelu": "PReLU (scalar)",
    "prelu_pc": "PReLU (per channel)",
}


def find(data: dict | None, op: str, dtype: str, numel: int | None, regime: str, pass_: str) -> dict | None:
    """fastact's row for op, dtype, size (None: the largest in the run), regime and pass; None if absent."""
    if data is None:
        return None
    numel = numel or max(r["numel"] for r in data["rows"])
    for r in data["rows"]:
        if (r["impl"], r["op"], r["dtype"], r["numel"], r["regime"], r["pass"]) == (
                "fastact", op, dtype, numel, regime, pass_):
            return r
    return None


def speedup(r: dict | None, peer: str) -> str:
    value = (r or {}).get("speedup_vs", {}).get(peer)
    return f"{value:.2f}x" if value else "—"


def fraction(r: dict | None) -> str:
    return f"{r['copy_fraction']:.2f}" if r else "—"


def dtypes_of(data: dict) -> list[str]:
    return [d for d in ("float32", "bfloat16", "float16") if any(r["dtype"] == d for r in data["rows"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="a fastact-bench kernels --json file")
    parser.add_argument("--compile", metavar="JSON",
                        help="GPU: a second run with torch.compile (its fwd+bwd speedups fill the last column)")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    if any(r["device"] == "cuda" for r in data["rows"]):
        compiled = None
        if args.compile:
            with open(args.compile) as f:
                compiled = json.load(f)
        return gpu_table(data, compiled)
    sizes = sorted({r["numel"] for r in data["rows"]})
    small, large = sizes[0], sizes[-1]

    def row(op, dtype, numel, regime, pass_):
        return find(data, op, dtype, numel, regime, pass_)

    print(f"| op | dtype | fwd+bwd 2^{small.bit_length() - 1} ms | vs native | vs eager | vs compile "
          f"| fwd+bwd 2^{large.bit_length() - 1} vs native / compile | kernel x copy 2^{large.bit_length() - 1} fwd / bwd |")
    print("|---|---|---|---|---|---|---|---|")
    for op, name in NAMES.items():
        for dtype in dtypes_of(data):
            user_small = row(op, dtype, small, "user", "fwd+bwd")
            if user_small is None:
                continue
            user_large = row(op, dtype, large, "user", "fwd+bwd")
            print(f"| {name} | {dtype} | {user_small['median_ms']:.3f} | {speedup(user_small, 'native')} "
                  f"| {speedup(user_small, 'eager')} | {speedup(user_small, 'compile')} "
                  f"| {speedup(user_large, 'native')} / {speedup(user_large, 'compile')} "
                  f"| {fraction(row(op, dtype, large, 'kernel', 'fwd'))} / {fraction(row(op, dtype, large, 'kernel', 'bwd'))} |")


def gpu_table(data: dict, compiled: dict | None) -> None:
    """One row per op and dtype at the largest size: kernel regime fraction of copy and speed against native
    (where aten has out= variants), user regime fwd+bwd against native, eager and torch.compile (from the
    second run)."""
    print("| op | dtype | kernel fwd / bwd x copy | kernel vs native fwd / bwd "
          "| fwd+bwd vs native | fwd+bwd vs eager | fwd+bwd vs compile |")
    print("|---|---|---|---|---|---|---|")
    for op, name in NAMES.items():
        for dtype in dtypes_of(data):
            fwd, bwd = find(data, op, dtype, None, "kernel", "fwd"), find(data, op, dtype, None, "kernel", "bwd")
            if fwd is None:
                continue
            user = find(data, op, dtype, None, "user", "fwd+bwd")
            print(f"| {name} | {dtype} | {fraction(fwd)} / {fraction(bwd)} | {speedup(fwd, 'native')} / "
                  f"{speedup(bwd, 'native')} | {speedup(user, 'native')} | {speedup(user, 'eager')} "
                  f"| {speedup(find(compiled, op, dtype, None, 'user', 'fwd+bwd'), 'compile')} |")


if __name__ == "__main__":
    main()
