"""Time the layouts of rows_layout.cu beside torch's copy and native kernels and fastact's out= ops, in one process.

    nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -shared -Xcompiler -fPIC \\
        -o /tmp/librows_layout.so rows_layout.cu
    python rows_layout.py /tmp/librows_layout.so [--json PATH]

For LeakyReLU(0.5) and SiLU, 2^28 elements, float32 and bfloat16. Every implementation's output is first
checked against torch's (outputs poisoned with NaN before: LeakyReLU bit for bit, SiLU to within rounding).
Implementations are timed in turns, two ways: `events` (each round launches an implementation `--launches`
times between two CUDA events, as a user's loop would: host-side launch cost can show) and `graph` (those
launches captured once in a CUDA graph and replayed: the GPU time alone). Medians over the rounds, with the
GB/s of the minimal traffic (read x, write y) and the ratio to torch's y.copy_(x) and to torch's own op.
"""
import argparse
import ctypes
import json
import statistics

import torch
import torch.nn.functional as F

OPS = {  # name: (code in the library, torch reference, torch out= call, fastact out= call)
    "leaky_relu": (0, lambda x: F.leaky_relu(x, 0.5),
                   lambda x, y: torch.ops.aten.leaky_relu.out(x, 0.5, out=y),
                   lambda x, y: torch.ops.fastact.leaky_relu.out(x, 0.5, out=y)),
    "silu": (1, F.silu,
             lambda x, y: torch.ops.aten.silu.out(x, out=y),
             lambda x, y: torch.ops.fastact.swish.out(x, 1.0, out=y)),
}


def check(name, y, ref, exact):
    if exact:
        ok = torch.equal(y, ref)
    else:
        ok = torch.allclose(y.double(), ref.double(), rtol=2e-6 if y.dtype == torch.float32 else 1e-2, atol=1e-30)
    if not ok:
        raise RuntimeError(f"{name} {y.dtype}: output differs from torch's")


def time_rounds(impls, rounds, launches, use_graph):
    runners = {}
    for name, fn in impls.items():
        if use_graph:
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # warm-up on the side stream, as capture wants
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph):
                for _ in range(launches):
                    fn()
            runners[name] = graph.replay
        else:
            runners[name] = (lambda fn=fn: [fn() for _ in range(launches)])
    for run in runners.values():
        run()
    torch.cuda.synchronize()
    times = {name: [] for name in runners}
    items = list(runners.items())
    for r in range(rounds):
        for name, run in items[r % len(items):] + items[:r % len(items)]:  # rotate who goes first
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / launches)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("library")
    ap.add_argument("--numel", type=int, default=1 << 28)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--launches", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()

    lib = ctypes.CDLL(args.library)
    lib.variant_name.restype = ctypes.c_char_p
    lib.run_variant.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_longlong, ctypes.c_void_p]
    names = [lib.variant_name(i).decode() for i in range(lib.variant_count())]
    try:
        import fastact  # noqa: F401, PLC0415
        have_fastact = True
    except Exception as exc:  # noqa: BLE001
        print("fastact not importable:", exc)
        have_fastact = False

    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "numel": args.numel, "rows": []}
    for op, (code, reference, torch_out, fastact_out) in OPS.items():
        for dcode, dtype in ((0, torch.float32), (1, torch.bfloat16)):
            x = torch.randn(args.numel, device="cuda", dtype=dtype)
            y = torch.empty_like(x)
            ref = reference(x)
            impls = {"torch copy_": lambda: y.copy_(x), f"torch {op}.out": lambda: torch_out(x, y)}
            if have_fastact:
                impls[f"fastact {op}.out"] = lambda: fastact_out(x, y)
            for i, name in enumerate(names):
                impls[name] = (lambda i=i: lib.run_variant(i, code, dcode, x.data_ptr(), y.data_ptr(), args.numel,
                                                           torch.cuda.current_stream().cuda_stream))
            for name, fn in impls.items():
                if name == "torch copy_":
                    continue
                y.fill_(float("nan"))
                rc = fn()
                torch.cuda.synchronize()
                if isinstance(rc, int) and rc != 0:
                    raise RuntimeError(f"{name}: CUDA error {rc}")
                check(name, y, ref, exact=(op == "leaky_relu" or name.startswith("torch")))
            nbytes = 2 * args.numel * x.element_size()
            for mode in ("events", "graph"):
                times = time_rounds(impls, args.rounds, args.launches, mode == "graph")
                med = {name: statistics.median(t) for name, t in times.items()}
                native = med[f"torch {op}.out"]
                print(f"\n{results['device']} {op} {dtype} n={args.numel}, {mode}: median of {args.rounds} rounds x "
                      f"{args.launches} launches")
                print(f"{'implementation':28s} {'ms':>8s} {'spread':>7s} {'GB/s':>7s} {'x copy':>7s} {'vs torch':>8s}")
                for name, m in med.items():
                    t = sorted(times[name])
                    spread = (t[int(0.9 * len(t)) - 1] - t[int(0.1 * len(t))]) / m
                    print(f"{name:28s} {m:8.4f} {spread:7.1%} {nbytes / m / 1e6:7.0f} {med['torch copy_'] / m:7.3f} "
                          f"{native / m:8.3f}")
                    results["rows"].append({"op": op, "mode": mode, "impl": name, "dtype": str(dtype).split(".")[-1],
                                            "median_ms": m, "gbps": nbytes / m / 1e6,
                                            "copy_fraction": med["torch copy_"] / m, "vs_torch": native / m})
            del x, y, ref
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
