"""Print the README's CPU results table (markdown) from a `fastact-bench kernels --json` file, so that every
number in README.md is read from the recorded run rather than copied by hand.

    python benchmarks/readme_table.py benchmarks/results/cpu/cpu_kernels.json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="a fastact-bench kernels --json file")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    rows = [r for r in data["rows"] if r["impl"] == "fastact"]
    sizes = sorted({r["numel"] for r in rows})
    small, large = sizes[0], sizes[-1]

    def row(op, dtype, numel, regime, pass_):
        for r in rows:
            if (r["op"], r["dtype"], r["numel"], r["regime"], r["pass"]) == (op, dtype, numel, regime, pass_):
                return r
        return None

    def speedup(r, peer):
        value = (r or {}).get("speedup_vs", {}).get(peer)
        return f"{value:.2f}x" if value else "—"

    def fraction(r):
        return f"{r['copy_fraction']:.2f}" if r else "—"

    print(f"| op | dtype | fwd+bwd 2^{small.bit_length() - 1} ms | vs native | vs eager | vs compile "
          f"| fwd+bwd 2^{large.bit_length() - 1} vs native / compile | kernel x copy 2^{large.bit_length() - 1} fwd / bwd |")
    print("|---|---|---|---|---|---|---|---|")
    dtypes = [d for d in ("float32", "bfloat16", "float16") if any(r["dtype"] == d for r in rows)]
    for op, name in NAMES.items():
        for dtype in dtypes:
            user_small = row(op, dtype, small, "user", "fwd+bwd")
            if user_small is None:
                continue
            user_large = row(op, dtype, large, "user", "fwd+bwd")
            print(f"| {name} | {dtype} | {user_small['median_ms']:.3f} | {speedup(user_small, 'native')} "
                  f"| {speedup(user_small, 'eager')} | {speedup(user_small, 'compile')} "
                  f"| {speedup(user_large, 'native')} / {speedup(user_large, 'compile')} "
                  f"| {fraction(row(op, dtype, large, 'kernel', 'fwd'))} / {fraction(row(op, dtype, large, 'kernel', 'bwd'))} |")


if __name__ == "__main__":
    main()
