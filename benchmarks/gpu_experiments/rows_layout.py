"""Time the layouts of rows_layout.cu beside torch's copy and LeakyReLU and fastact's own kernel, in one process.

    nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC -o /tmp/librows_layout.so rows_layout.cu
    python rows_layout.py /tmp/librows_layout.so [--json PATH]

Every implementation writes y = leaky_relu(x, 0.5) for 2^28 elements (float32, bfloat16); outputs are poisoned
with NaN and compared bit for bit with torch's before timing. Implementations are timed in turns (one round:
each runs `--launches` times between two CUDA events), and the median per launch over the rounds is reported
with the GB/s of the minimal traffic (read x, write y) and the ratio to torch's y.copy_(x) and F.leaky_relu.
"""
import argparse
import ctypes
import json
import statistics

import torch

ALPHA = 0.5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("library")
    ap.add_argument("--numel", type=int, default=1 << 28)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--launches", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()

    lib = ctypes.CDLL(args.library)
    lib.variant_name.restype = ctypes.c_char_p
    lib.run_variant.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong,
                                ctypes.c_float]
    names = [lib.variant_name(i).decode() for i in range(lib.variant_count())]
    try:
        import fastact  # noqa: F401, PLC0415
        have_fastact = True
    except Exception as exc:  # noqa: BLE001
        print("fastact not importable:", exc)
        have_fastact = False

    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "numel": args.numel, "rows": []}
    for code, dtype in ((0, torch.float32), (1, torch.bfloat16)):
        x = torch.randn(args.numel, device="cuda", dtype=dtype)
        y = torch.empty_like(x)
        ref = torch.nn.functional.leaky_relu(x, ALPHA)
        impls = {"torch copy_": lambda: y.copy_(x),
                 "torch leaky_relu.out": lambda: torch.ops.aten.leaky_relu.out(x, ALPHA, out=y)}
        if have_fastact:
            impls["fastact leaky_relu.out"] = lambda: torch.ops.fastact.leaky_relu.out(x, ALPHA, out=y)
        for i, name in enumerate(names):
            impls[name] = (lambda i=i: lib.run_variant(i, code, x.data_ptr(), y.data_ptr(), args.numel, ALPHA))
        for name, fn in impls.items():
            if name == "torch copy_":
                continue
            y.fill_(float("nan"))
            rc = fn()
            torch.cuda.synchronize()
            if isinstance(rc, int) and rc != 0:
                raise RuntimeError(f"{name}: CUDA error {rc}")
            if not torch.equal(y, ref):
                raise RuntimeError(f"{name} {dtype}: output differs from torch's")
        times = {name: [] for name in impls}
        for fn in impls.values():  # warm-up
            fn()
        torch.cuda.synchronize()
        for r in range(args.rounds):
            order = list(impls.items())
            order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
            for name, fn in order:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(args.launches):
                    fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / args.launches)
        nbytes = 2 * args.numel * x.element_size()
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"\n{torch.cuda.get_device_name(0)} {dtype} n={args.numel}: median of {args.rounds} rounds x "
              f"{args.launches} launches")
        print(f"{'implementation':28s} {'ms':>8s} {'spread':>7s} {'GB/s':>7s} {'x copy':>7s} {'vs torch':>8s}")
        for name, m in med.items():
            t = sorted(times[name])
            spread = (t[int(0.9 * len(t)) - 1] - t[int(0.1 * len(t))]) / m
            print(f"{name:28s} {m:8.4f} {spread:7.1%} {nbytes / m / 1e6:7.0f} {med['torch copy_'] / m:7.3f} "
                  f"{med['torch leaky_relu.out'] / m:8.3f}")
            results["rows"].append({"impl": name, "dtype": str(dtype).split(".")[-1], "median_ms": m,
                                    "gbps": nbytes / m / 1e6, "copy_fraction": med["torch copy_"] / m,
                                    "vs_torch_leaky": med["torch leaky_relu.out"] / m})
        del x, y, ref
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
