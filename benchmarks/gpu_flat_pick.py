"""Pick the flat CUDA kernel's vectors per thread from `gpu_run.sh`'s flat phase, or none.

    python benchmarks/gpu_flat_pick.py flat_0.json flat_1.json flat_2.json flat_4.json
    python benchmarks/gpu_flat_pick.py flat_*.json --markdown swish=1,mish=4,leaky_0.5=1,leaky_-0.5=1

Each file is a `fastact-bench kernels` run with FASTACT_CUDA_FLAT=<v> (0: the rows kernel), the same ops,
dtypes and passes, each with torch's native kernel timed in the same run. Machines drift between runs, so
the measure is fastact's time over native's in the same run, per (op, dtype, regime, pass); a setting is
summed up by the geometric mean and the worst of those ratios. Prints a table and, last, `best: <v>` for
the setting with the lowest geometric mean if it beats the rows kernel's by more than 0.5% with no row
more than 2% slower, else `best: none`. With --markdown OP=V,...: the README's table of the rows kernel (0)
against the chosen setting per op instead.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path


def ratios_to_native(path: Path) -> dict[tuple, float]:
    rows = json.loads(path.read_text())["rows"]
    native = {(r["op"], r["dtype"], r["regime"], r["pass"]): r["median_ms"] for r in rows if r["impl"] == "native"}
    out = {}
    for r in rows:
        key = (r["op"], r["dtype"], r["regime"], r["pass"])
        if r["impl"] == "fastact" and key in native:
            out[key] = r["median_ms"] / native[key]
    return out


def markdown(by_setting: dict[int, dict], choice: dict[str, int]) -> None:
    """The rows kernel against the chosen setting, per op and dtype: fastact/native time in the same run."""
    print("| op | dtype | vectors | kernel fwd | kernel bwd | user fwd | user fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    dtypes = ("float32", "bfloat16", "float16")
    for op, v in choice.items():
        for dtype in dtypes:
            cells = []
            for regime, pass_ in (("kernel", "fwd"), ("kernel", "bwd"), ("user", "fwd"), ("user", "fwd+bwd")):
                key = (op, dtype, regime, pass_)
                rows, flat = by_setting[0].get(key), by_setting[v].get(key)
                cells.append(f"{rows:.3f} → {flat:.3f}" if rows and flat else "—")
            print(f"| {op} | {dtype} | {v} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="flat_<v>.json files; v is read from the name")
    parser.add_argument("--markdown", metavar="OP=V,...", help="print the rows kernel against these settings")
    args = parser.parse_args()
    by_setting = {}
    for path in args.runs:
        match = re.search(r"flat_(\d)\.json$", path.name)
        if match and path.exists():
            by_setting[int(match.group(1))] = ratios_to_native(path)
    if 0 not in by_setting:
        print("best: none (no run of the rows kernel)")
        return
    if args.markdown:
        markdown(by_setting, {op: int(v) for op, v in (item.split("=") for item in args.markdown.split(","))})
        return
    base = by_setting[0]
    summary = {}
    print(f"{'FLAT':>4} {'rows':>4} {'geomean fa/native':>18} {'worst fa/native':>16} {'worst vs rows':>14}")
    for v, ratios in sorted(by_setting.items()):
        keys = [k for k in ratios if k in base]
        if not keys:
            continue
        geomean = math.exp(sum(math.log(ratios[k]) for k in keys) / len(keys))
        worst = max(ratios[k] for k in keys)
        worst_vs_rows = max(ratios[k] / base[k] for k in keys)
        summary[v] = (geomean, worst_vs_rows)
        print(f"{v:>4} {len(keys):>4} {geomean:>18.4f} {worst:>16.4f} {worst_vs_rows:>14.4f}")
    for v, ratios in sorted(by_setting.items()):  # per row, for the record
        for k in sorted(ratios):
            if k in base:
                print(f"  FLAT={v} {'/'.join(k):45s} fa/native {ratios[k]:.4f}  vs rows {ratios[k] / base[k]:.4f}")
    candidates = [v for v in summary if v != 0 and summary[v][0] < summary[0][0] * 0.995 and summary[v][1] < 1.02]
    best = min(candidates, key=lambda v: summary[v][0]) if candidates else None
    print(f"best: {best if best is not None else 'none'}")


if __name__ == "__main__":
    main()
