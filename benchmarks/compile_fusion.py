"""Whole models under torch.compile: torch's activations against fastact's, traced as fusible plain forms
(compile fusion, the default) and as calls to fastact's kernels (`fastact.set_compile_fusion(False)`).

Blocks of Conv-BatchNorm-activation, dense convolutions (compute-bound) and depthwise ones (where the passes
over memory that fusion saves weigh more); inference (no_grad) and a training step (forward + backward).
Every ratio is against torch's compiled model from the same run, the three timed in turns; medians of
torch.utils.benchmark blocks. (On CPU, Mish keeps fastact's kernel under compile fusion too: its two columns
run the same code, and their difference is the noise of the run.)

    python benchmarks/compile_fusion.py [--threads 2] [--rounds 5] [--min-run-time 0.5] [--json PATH]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics

import torch
import torch.nn as nn
import torch.utils.benchmark as benchmark

import fastact

ACTIVATIONS = {
    "SiLU(inplace)": lambda c: nn.SiLU(inplace=True),
    "Mish": lambda c: nn.Mish(),
    "LeakyReLU(0.1, inplace)": lambda c: nn.LeakyReLU(0.1, inplace=True),
    "PReLU(C)": lambda c: nn.PReLU(c),
}
# device -> name -> (input shape, depthwise); a GPU gets larger batches (small ones would time the launches)
MODELS = {
    "cpu": {"dense 8x32x56x56": ((8, 32, 56, 56), False),
            "depthwise 16x32x112x112": ((16, 32, 112, 112), True)},
    "cuda": {"dense 64x64x56x56": ((64, 64, 56, 56), False),
             "depthwise 64x64x112x112": ((64, 64, 112, 112), True)},
}


def blocks(act, channels: int, depthwise: bool, n: int = 4) -> nn.Sequential:
    layers = []
    for _ in range(n):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=channels if depthwise else 1),
                   nn.BatchNorm2d(channels), act(channels)]
    return nn.Sequential(*layers)


def compiled_variants(original: nn.Module, converted: nn.Module) -> dict:
    """name -> (compiled model, compile fusion setting). The converted model is compiled once: torch.compile
    guards on the setting, so it keeps one graph for each and the setting picks it at every call."""
    torch._dynamo.reset()
    converted_compiled = torch.compile(converted)
    return {"torch": (torch.compile(original), True), "fused": (converted_compiled, True),
            "kernels": (converted_compiled, False)}


def measure(variants: dict, x: torch.Tensor, rounds: int, min_run_time: float, threads: int) -> dict:
    """(variant, pass) -> median ms: the variants timed in turns, `rounds` blocks each (the host drifts by more
    than the differences measured), the median of the blocks' medians."""
    times = {(name, p): [] for name in variants for p in ("infer", "train")}
    previous = fastact.compile_fusion()
    try:
        for name, (model, fusion) in variants.items():  # compile, forward and backward
            fastact.set_compile_fusion(fusion)
            model(x).sum().backward()
            with torch.no_grad():
                model(x)
        for _ in range(rounds):
            for name, (model, fusion) in variants.items():
                fastact.set_compile_fusion(fusion)
                with torch.no_grad():
                    timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
                    times[name, "infer"].append(timer.blocked_autorange(min_run_time=min_run_time).median)
                timer = benchmark.Timer("model(x).sum().backward()", globals={"model": model, "x": x},
                                        num_threads=threads)
                times[name, "train"].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    finally:
        fastact.set_compile_fusion(previous)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="timed blocks per variant, taken in turns")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {args.device} ({where}), {args.threads} threads; "
          "ms (x = torch compiled / this, > 1 is faster)")
    print(f"{'model':24s} {'activation':24s} {'pass':6s} {'torch':>8s} {'fused':>15s} {'kernels':>15s}")
    for model_name, (shape, depthwise) in MODELS[args.device].items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(args.device)
        for act_name, act in ACTIVATIONS.items():
            torch.manual_seed(0)
            original = blocks(act, shape[1], depthwise).to(args.device)
            converted = fastact.nn.convert(copy.deepcopy(original))
            ms = measure(compiled_variants(original, converted), x, args.rounds, args.min_run_time, args.threads)
            for name in ("infer", "train"):
                t_torch, t_fused, t_kernels = (ms[v, name] for v in ("torch", "fused", "kernels"))
                rows.append({"model": model_name, "activation": act_name, "pass": name, "torch_ms": t_torch,
                             "fastact_fused_ms": t_fused, "fastact_kernels_ms": t_kernels})
                print(f"{model_name:24s} {act_name:24s} {name:6s} {t_torch:8.2f} "
                      f"{t_fused:8.2f} ({t_torch / t_fused:.2f}x) "
                      f"{t_kernels:8.2f} ({t_torch / t_kernels:.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": args.device, "device_name": where,
                       "threads": args.threads, "machine": platform.platform(),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
