"""kernel benchmark: fastact vs PyTorch native, eager, torch.compile, memory copy

Times every fastact op against what a user already has:
  native    torch's own kernel where one exists (F.silu, F.mish, F.leaky_relu, F.prelu)
  eager     the composition in plain torch ops (x * torch.sigmoid(beta * x), x * torch.tanh(F.softplus(x)),
            torch.where(x > 0, x, a * x))
  compile   torch.compile of that composition
for the forward pass, forward+backward and the backward alone, with torch.utils.benchmark (median of blocks,
after warm-up; CUDA is synchronized by the timer).

Two regimes, labelled in every row:
  user      fresh outputs every call, as a user calls the function (on CPU, fresh large outputs cost page
            faults: at 2^24 float32 each 64 MB output is newly mapped memory; fastact backs its large CPU
            outputs with transparent huge pages where the system allows it, fastact.cpu_huge_pages(), and
            torch does so for all tensors with THP_MEM_ALLOC_ENABLE=1: both are recorded under "machine")
  kernel    the kernel alone, writing into preallocated buffers through the out= ops (fastact's
            <op>.out / <op>_backward.out, torch's aten out= variants where they exist): the memory-bound
            regime, compared with the bandwidth of y.copy_(x) measured in the same run.

Learnable parameters (swish_beta, prelu) take a new value at every call, from a cycle of 9, in every
implementation: as in training, fastact's bfloat16/float16 lookup tables, kept for the last 8 values, are
rebuilt for each call that uses one.

Bandwidth counts the minimal traffic: forward reads x and writes y (2 tensors), backward reads x and dy and
writes dx (3 tensors), forward+backward the sum (5); the parameter is negligible. copy_fraction is a row's
GB/s over that of a copy of x (same device, dtype and size) timed in turns with the row's implementations, so
that a busy moment of a shared host slows both sides of the ratio alike (copy_gbps and copy_reference in the
row): y.copy_(x) into a preallocated y for the kernel regime, x.clone() (a fresh output) for the user regime.
On CPU fastact's kernels write with non-temporal stores where a call touches more bytes than its streaming
threshold (a quarter of the last-level cache; "streamed" in fastact's rows), and y.copy_(x) does not: there a
kernel can read above 1 of the copy. The size's copy_gbps (the better of two measurements, before and after
that size's rows) is the headline figure of each table.
saved_bytes is what one forward keeps for backward (unique storages seen by
torch.autograd.graph.saved_tensors_hooks); user regime rows only, null in kernel rows (the out= calls keep
nothing for backward).

At the end a "targets" table (issue 3) is computed from the rows, per device and dtype, worst case first.
CPU: fastact/native time <= 1 (user regime, fwd and fwd+bwd, every size: swish, leaky, prelu); mish >= 5x
native at 2^20; learnable swish and per-channel prelu fwd+bwd >= 3x eager and >= 1x torch.compile; kernel
regime fwd and bwd >= 0.8 of the copy bandwidth at 2^24 (mish 0.6). CUDA: fastact/native time <= 1 for every
op with a native, and >= 0.85 of the copy bandwidth at 2^28. A target whose rows failed is not met; one whose
rows are not in the run (a --quick run has no 2^24) is "not run" and not counted. A verdict whose deciding
rows had an interquartile range over 25% of their median is marked "noisy" (it still counts).
A torch.compile (or any peer) that fails is reported as a missing row with the error, not a crash.

Examples:
  fastact-bench kernels                                   # full run: cpu (and cuda if present)
  fastact-bench kernels --quick                           # under a minute on a small CPU
  fastact-bench kernels --ops mish,swish_beta --dtypes float32 --sizes 20 --json out.json --plot out.png
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import itertools
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .homework.checks import MAX_THREADS, json_text

PASSES = ("fwd", "fwd+bwd", "bwd")
IMPLS = ("fastact", "native", "eager", "compile")
REGIMES = ("user", "kernel")
PEERS = ("native", "eager", "compile")
# Tensors of traffic per pass: fwd reads x, writes y; bwd reads x and dy, writes dx.
TENSORS_MOVED = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
DEFAULT_SIZES = {"cpu": (2 ** 20, 2 ** 24), "cuda": (2 ** 28,)}
DEFAULT_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "bfloat16", "float16")}
QUICK_MIN_RUN_TIME = 0.05


# --------------------------------------------------------------------------------------------------
# The ops and their implementations
# --------------------------------------------------------------------------------------------------
def _channel_view(p: Tensor, x: Tensor) -> Tensor:
    """A one-element or per-channel (dim 1) parameter, shaped to broadcast against x."""
    if x.dim() < 2:
        return p
    return p.reshape([1, -1] + [1] * (x.dim() - 2))


# The eager compositions, each its own function (torch.compile caches per code object).
def _eager_silu(x: Tensor, p: Any) -> Tensor:
    return x * torch.sigmoid(x)


def _eager_swish_beta(x: Tensor, beta: Tensor) -> Tensor:
    return x * torch.sigmoid(_channel_view(beta, x) * x)


def _eager_mish(x: Tensor, p: Any) -> Tensor:
    return x * torch.tanh(F.softplus(x))


def _eager_leaky(x: Tensor, a: float) -> Tensor:
    return torch.where(x > 0, x, a * x)


def _eager_prelu(x: Tensor, w: Tensor) -> Tensor:
    return torch.where(x > 0, x, _channel_view(w, x) * x)


def _fa():
    import fastact  # noqa: PLC0415  (imported late: the harness module loads without the compiled library)
    return fastact


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    description: str
    kernel: str                  # name under torch.ops.fastact
    param: str                   # "none", "float" (fixed), "scalar" or "channel" (learnable tensor)
    value: float                 # the fixed float, or the tensor parameter's initial value
    param_name: str              # the kernel schema's parameter name (grad_<param_name> in backward.out)
    fastact: Callable
    native: Callable | None
    eager: Callable
    native_kernel: str | None    # aten op with out= variants (fwd "out", bwd "grad_input"), or None

    @property
    def learnable(self) -> bool:
        return self.param in ("scalar", "channel")

    @property
    def per_channel(self) -> bool:
        return self.param == "channel"


OPS: dict[str, OpSpec] = {}


def _add(*args, **kwargs) -> None:
    spec = OpSpec(*args, **kwargs)
    OPS[spec.name] = spec


_add("swish", "SiLU: swish with fixed beta = 1", "swish", "float", 1.0, "beta",
     lambda x, p: _fa().swish(x, p), lambda x, p: F.silu(x), _eager_silu, "silu")
_add("swish_beta", "swish, learnable scalar beta", "swish_param", "scalar", 1.5, "beta",
     lambda x, p: _fa().swish(x, p), None, _eager_swish_beta, None)
_add("swish_beta_pc", "swish, learnable per-channel beta", "swish_param", "channel", 1.5, "beta",
     lambda x, p: _fa().swish(x, p), None, _eager_swish_beta, None)
_add("mish", "mish", "mish", "none", 0.0, "none",
     lambda x, p: _fa().mish(x), lambda x, p: F.mish(x), _eager_mish, "mish")
_add("leaky_0.5", "leaky ReLU, slope 0.5", "leaky_relu", "float", 0.5, "negative_slope",
     lambda x, p: _fa().leaky_relu(x, p), lambda x, p: F.leaky_relu(x, p), _eager_leaky, "leaky_relu")
_add("leaky_-0.5", "leaky ReLU, slope -0.5", "leaky_relu", "float", -0.5, "negative_slope",
     lambda x, p: _fa().leaky_relu(x, p), lambda x, p: F.leaky_relu(x, p), _eager_leaky, "leaky_relu")
_add("prelu", "PReLU, one learnable weight", "prelu", "scalar", 0.25, "weight",
     lambda x, p: _fa().prelu(x, p), lambda x, p: F.prelu(x, p), _eager_prelu, None)
_add("prelu_pc", "PReLU, learnable per-channel weight", "prelu", "channel", 0.25, "weight",
     lambda x, p: _fa().prelu(x, p), lambda x, p: F.prelu(x, p), _eager_prelu, None)

OP_GROUPS = {
    "all": list(OPS),
    "leaky": ["leaky_0.5", "leaky_-0.5"],
    "swish_learnable": ["swish_beta", "swish_beta_pc"],
    "per_channel": ["swish_beta_pc", "prelu_pc"],
}
QUICK_OPS = list(OPS)


def _impl_available(spec: OpSpec, impl: str, regime: str) -> bool:
    if regime == "kernel":
        return impl == "fastact" or (impl == "native" and spec.native_kernel is not None)
    return impl != "native" or spec.native is not None


def _kernel_passes(spec: OpSpec, impl: str, x: Tensor, p: Any, dy: Tensor) -> tuple[dict[str, Callable], dict]:
    """Closures running the kernel alone into preallocated buffers, for fwd, bwd and fwd+bwd; and notes."""
    y, gx = torch.empty_like(x), torch.empty_like(x)
    notes = {}
    if impl == "fastact":
        op = getattr(torch.ops.fastact, spec.kernel)
        bop = getattr(torch.ops.fastact, spec.kernel + "_backward")
        turns = itertools.cycle([() if spec.param == "none" else (v,) for v in _param_values(spec, p)])
        if spec.learnable:
            gp = {f"grad_{spec.param_name}": torch.empty_like(p, memory_format=torch.contiguous_format)}
        else:
            gp = {}
        fwd = lambda: op.out(x, *next(turns), out=y)  # noqa: E731
        bwd = lambda: bop.out(dy, x, *next(turns), grad_input=gx, **gp)  # noqa: E731

        def both():  # one parameter value for the step's forward and backward
            args = next(turns)
            op.out(x, *args, out=y)
            bop.out(dy, x, *args, grad_input=gx, **gp)
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}, notes
    # torch's aten out= variants
    name = spec.native_kernel
    op = getattr(torch.ops.aten, name)
    bop = getattr(torch.ops.aten, name + "_backward")
    if name == "leaky_relu":
        fwd = lambda: op.out(x, p, out=y)  # noqa: E731
        bwd = lambda: bop.grad_input(dy, x, p, False, grad_input=gx)  # noqa: E731
    elif name == "mish":  # aten has no mish_backward out= variant: its backward allocates
        fwd = lambda: op.out(x, out=y)  # noqa: E731
        bwd = lambda: bop(dy, x)  # noqa: E731
        notes = {ps: "aten.mish_backward has no out= variant: its backward allocates dx"
                 for ps in ("bwd", "fwd+bwd")}
    else:
        fwd = lambda: op.out(x, out=y)  # noqa: E731
        bwd = lambda: bop.grad_input(dy, x, grad_input=gx)  # noqa: E731

    def both():
        fwd()
        bwd()
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}, notes


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _warm_up(fn: Callable, device: str, warmup: int) -> float:
    """Seconds per call after warm-up (the first call may compile, allocate or build a graph)."""
    warm = []
    for _ in range(max(2, warmup)):
        start = time.perf_counter()
        fn()
        _sync(device)
        warm.append(time.perf_counter() - start)
    return max(min(warm[1:]), 1e-7)


def _summary(times: list[float], number: int) -> dict:
    times = sorted(times)
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_s": statistics.median(times), "iqr_s": q(0.75) - q(0.25), "runs": len(times) * number,
            "blocks": len(times)}


# Samples (blocks) each implementation of a row gets at least. A slow row reaches min_run_time in a few long
# blocks; with 5, the 2^24 user-regime rows that a host's page faults hit had medians of 6 samples with
# interquartile ranges twice the median. The full CPU run took 534 s with 11, 440 s with 5 (the first in a
# slower phase of the host; the rows below 11 samples added up to ~40 s).
MIN_BLOCKS = 11


def time_interleaved(fns: dict[str, Callable], device: str, threads: int, min_run_time: float, warmup: int = 3,
                     min_blocks: int = MIN_BLOCKS) -> dict[str, dict | Exception]:
    """Median seconds per call of each fn() over blocks of calls, timed by torch.utils.benchmark.Timer (whose
    clock synchronizes CUDA), the implementations taking turns block by block, in an order shuffled anew for
    every round: a slow spell of a shared machine, or a state of the heap, then falls on all of them alike
    instead of on whichever ran then or after a given peer (while they still need samples: a slow peer's
    fewer, longer blocks are not padded out). Each block lasts about min_run_time / 10 (sized from the
    warm-up), each fn gets at least min_blocks and min_run_time in all. (Timer.blocked_autorange sizes blocks
    so that its loop overhead is under 1e-4 of a block, which at fast ops means few long blocks and slow short
    runs.) A fn that raises is dropped and its exception returned in its place."""
    from torch.utils import benchmark  # noqa: PLC0415

    results: dict[str, dict | Exception] = {}
    timers, numbers, times, totals = {}, {}, {}, {}
    with benchmark.utils.common.set_torch_threads(threads):
        for name, fn in fns.items():
            try:
                numbers[name] = max(1, int(min_run_time / 10 / _warm_up(fn, device, warmup)))
            except Exception as exc:  # noqa: BLE001  (a failing peer is reported, not fatal)
                results[name] = exc
                continue
            timers[name] = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
            times[name], totals[name] = [], 0.0

        def wanted(name: str) -> bool:
            return totals[name] < min_run_time or len(times[name]) < min_blocks

        # Each round takes its turns in a new order (shuffled, seeded): a block can pay for the state of the heap
        # that the block before it left, so no implementation should always follow the same one (measured: a
        # LeakyReLU fwd+bwd at 2^20 read 1.04x native's time when fastact went first, right after the copy,
        # and 0.99x when native did, in back-to-back runs).
        order_rng = random.Random(0)
        while any(wanted(n) for n in timers):
            order = list(timers)
            order_rng.shuffle(order)
            for name in [n for n in order if wanted(n)]:  # one that has its samples sits out the rest
                try:
                    seconds = _time_block(timers[name], numbers[name])
                except Exception as exc:  # noqa: BLE001
                    results[name] = exc
                    del timers[name]
                    continue
                times[name].append(seconds)
                totals[name] += seconds * numbers[name]
    for name in timers:
        results[name] = _summary(times[name], numbers[name])
    return results


def _time_block(timer, number: int) -> float:
    """Seconds per call over one block of number calls, on torch.utils.benchmark's timed loop (whose clock
    synchronizes CUDA). Timer.timeit would first make max(number // 100, 2) untimed calls in every block, half
    of a --quick run's time; the warm-up is _warm_up's, once per fn."""
    block = getattr(timer, "_timeit", None)
    if block is None:  # pragma: no cover  (a torch without it)
        return timer.timeit(number).times[-1]
    return block(number) / number


def time_median(fn: Callable, device: str, threads: int, min_run_time: float, warmup: int = 3,
                min_blocks: int = MIN_BLOCKS) -> dict:
    """time_interleaved of one fn."""
    result = time_interleaved({"fn": fn}, device, threads, min_run_time, warmup, min_blocks)["fn"]
    if isinstance(result, Exception):
        raise result
    return result


def measure_copy_gbps(x: Tensor, device: str, threads: int, min_run_time: float) -> float:
    """GB/s of y.copy_(x) into a preallocated y (reads x, writes y): the memory bandwidth reference."""
    y = torch.empty_like(x)
    t = time_median(lambda: y.copy_(x), device, threads, min_run_time)
    return _gbps(x.numel(), x.element_size(), 2, t["median_s"])


def saved_bytes(fn: Callable) -> int:
    """Bytes one forward keeps for backward: unique storages packed by the saved-tensor hooks."""
    storages: dict[tuple, int] = {}

    def pack(t: Tensor):
        s = t.untyped_storage()
        storages[(str(s.device), s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return int(sum(storages.values()))


def make_shape(numel: int, channels: int) -> tuple[int, ...]:
    """(N, C, H, W) holding numel elements, H * W <= 4096; 1-D if numel is not a multiple of C."""
    if numel % channels:
        return (numel,)
    spatial = numel // channels
    hw = math.gcd(spatial, 4096)
    h = 1 << ((hw.bit_length() - 1) // 2)
    return (spatial // hw, channels, h, hw // h)


def _make_param(spec: OpSpec, x: Tensor, channels: int) -> Any:
    if spec.param == "none":
        return None
    if spec.param == "float":
        return spec.value
    n = channels if spec.per_channel else 1
    p = torch.full((n,), spec.value, dtype=x.dtype, device=x.device)
    if spec.per_channel:  # distinct values per channel, around the initial value
        p += 0.1 * torch.linspace(-1, 1, n, dtype=x.dtype, device=x.device)
    return p


# A learnable parameter changes at every training step, and fastact keeps the lookup tables of its last 8
# parameter values (csrc/cpu/dispatch.cpp): the learnable ops' rows take their parameter from a cycle of 9
# values, so that every call meets a value whose tables are gone, as in training (one fixed value would time
# the reuse of its tables, as at inference). Every implementation takes the same turns.
PARAM_CYCLE = 9


def _param_values(spec: OpSpec, p: Any) -> list:
    """The values a row's calls take in turn: 9 for a learnable parameter (1/64 apart, distinct in every
    dtype), the one value otherwise."""
    if not spec.learnable:
        return [p]
    return [p + i / 64 for i in range(PARAM_CYCLE)]


def _grad_inputs(spec: OpSpec, x: Tensor, p: Any) -> tuple[Tensor, ...]:
    return (x, p) if spec.learnable else (x,)


class Compiled:
    """torch.compile of the eager compositions (compiled lazily, at the first call).

    variant "bwd" compiles a copy of the function (its own code object, so its own dynamo cache), for the
    backward-alone rows: those call backward repeatedly on one graph (retain_graph=True), which AOTAutograd
    refuses for a backward compiled with donated buffers, so that copy is first called (and compiled) with
    torch._functorch.config.donated_buffer=False."""

    def __init__(self):
        self.fns: dict[tuple[str, str], Callable] = {}

    def get(self, spec: OpSpec, variant: str = "") -> Callable:
        key = (spec.name, variant)
        if key not in self.fns:
            fn = spec.eager
            if variant:
                name = f"{fn.__name__}_{variant}"
                fn = types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name,
                                        fn.__defaults__, fn.__closure__)
            self.fns[key] = torch.compile(fn, dynamic=False)
        return self.fns[key]

    def reset(self) -> None:
        self.fns.clear()
        torch._dynamo.reset()


def _impl_fn(spec: OpSpec, impl: str, compiled: Compiled) -> Callable:
    if impl == "fastact":
        return spec.fastact
    if impl == "native":
        return spec.native
    if impl == "eager":
        return spec.eager
    return compiled.get(spec)


def _user_passes(f: Callable, spec: OpSpec, x: Tensor, p: Any, dy: Tensor, f_bwd: Callable | None = None,
                 bwd_context: Callable = contextlib.nullcontext) -> dict[str, Callable]:
    """Closures for the user regime: fwd under no_grad; fwd+bwd and bwd through autograd. The bwd pass
    builds its graph once (with f_bwd, under bwd_context) and times torch.autograd.grad on it."""
    f_bwd = f_bwd or f
    xg = x.detach().requires_grad_()
    values = _param_values(spec, p)
    pgs = [v.detach().requires_grad_() if spec.learnable else v for v in values]
    inputs = [_grad_inputs(spec, xg, pg) for pg in pgs]
    turn = itertools.cycle(range(len(values)))

    def fwd():
        with torch.no_grad():
            return f(x, values[next(turn)])

    def fwd_bwd():
        i = next(turn)
        return torch.autograd.grad(f(xg, pgs[i]), inputs[i], dy)

    graphs: list[Tensor] = []

    def bwd():
        if not graphs:  # the graphs (one per parameter value) are built on the first (warm-up) call
            with bwd_context():
                graphs.extend(f_bwd(xg, pg) for pg in pgs)
        i = next(turn)
        return torch.autograd.grad(graphs[i], inputs[i], dy, retain_graph=True)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "bwd": bwd,
            "_saved": lambda: saved_bytes(lambda: f(xg, pgs[0]))}


def _short_error(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:300]


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _thread_count(text: str) -> int:
    v = _positive_int(text)
    if v > MAX_THREADS:  # (torch's OpenMP pool aborts or crashes on tens of thousands)
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS} ({os.cpu_count()} CPUs here), got {text}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (0 < v < math.inf):  # also rejects nan and inf (an endless timing loop)
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return v


def _writable_path(path: str) -> str:
    """The path, if a file can be written there (checked before the run, not after it). A missing parent
    directory is fine where it can be created (the writers create it)."""
    if not path:
        raise argparse.ArgumentTypeError("empty path")
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise argparse.ArgumentTypeError(f"{path} is a directory")
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot write {path}: {parent} is not a directory")
    try:  # try it: os.access says yes to root, and /proc or a read-only mount refuse even root
        if os.path.exists(full):
            if os.path.isfile(full):  # not a device or pipe (/dev/stdout is fine; a fifo would block here)
                open(full, "a").close()  # append: leaves an existing file as it is
        else:
            tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _plot_path(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    try:
        from matplotlib.backend_bases import FigureCanvasBase  # noqa: PLC0415
    except ImportError:
        raise argparse.ArgumentTypeError("matplotlib is not installed") from None
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise argparse.ArgumentTypeError(f"{path}: the suffix must be an image format matplotlib writes "
                                         f"(.png, .pdf, .svg, ...), got {'.' + suffix if suffix else 'none'}")
    return _writable_path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="cpu, cuda, or all (cpu, plus cuda if available; default)")
    parser.add_argument("--ops", default=None,
                        help=f"comma-separated ops or groups (default all): {', '.join(OPS)}; "
                             f"groups: {', '.join(OP_GROUPS)}")
    parser.add_argument("--impls", default=None,
                        help="comma-separated implementations (default all; --quick: no compile): "
                             + ", ".join(IMPLS))
    parser.add_argument("--passes", default=None, help="comma-separated passes (default all): " + ", ".join(PASSES))
    parser.add_argument("--regimes", default=None,
                        help="user (fresh outputs), kernel (preallocated, out= ops), or both (default; "
                             "the same as user,kernel)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated dtypes (default: float32,bfloat16 on cpu, + float16 on cuda; "
                             "--quick: float32)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated element counts: k or 2^k means 2**k for k <= 40, else the count "
                             "(default: 2^20,2^24 on cpu, 2^28 on cuda; --quick: 2^20)")
    parser.add_argument("--channels", type=_positive_int, default=64,
                        help="C of the (N, C, H, W) input; per-channel ops get C parameters (default 64)")
    parser.add_argument("--threads", type=_thread_count, default=None,
                        help="torch CPU threads (default: torch's current setting, %d here)" % torch.get_num_threads())
    parser.add_argument("--min-run-time", type=_positive_float, default=None,
                        help="seconds of timing per row after warm-up (default 0.5; --quick: %g)" % QUICK_MIN_RUN_TIME)
    parser.add_argument("--quick", action="store_true",
                        help="a short run (under a minute on a 2-core CPU): 2^20 elements, float32, "
                             "no torch.compile, short timings; explicit options still apply")
    parser.add_argument("--json", metavar="PATH", type=_writable_path, default=None, help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH.png", type=_plot_path, default=None,
                        help="write bar charts of fastact's speedup over each peer (and kernel copy fractions); "
                             "the suffix picks the format: .png, .pdf, .svg, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-table", action="store_true", help="do not print the table of rows")


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _unique(values: list) -> list:
    """values without repeats, in order: a repeated dtype or size would time the same rows again."""
    return list(dict.fromkeys(values))


MAX_SIZE_EXPONENT = 40


def parse_size(token: str) -> int:
    """k or 2^k (also 2**k): 2**k for 0 <= k <= 40; a larger integer is the count itself. Anything else (1.5,
    2^100, -3) raises ValueError."""
    t = token.strip().lower().replace("**", "^")
    if t.startswith("2^"):
        k = int(t[2:])
        if not 0 <= k <= MAX_SIZE_EXPONENT:
            raise ValueError(f"2^{k}: the exponent must be 0..{MAX_SIZE_EXPONENT}")
        return 2 ** k
    v = int(t)  # not int(float(t)): 1.5 is an error, not 2^1
    if v < 0:
        raise ValueError(f"{v}: a size must be positive")
    return 2 ** v if v <= MAX_SIZE_EXPONENT else v


def _device_memory_bytes(device: str) -> int | None:
    """Total memory of the device (physical memory for cpu), or None if unknown."""
    try:
        if device == "cuda":
            return int(torch.cuda.get_device_properties(0).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError, AssertionError):
        return None


@dataclasses.dataclass
class Config:
    devices: list[str]
    ops: list[str]
    impls: list[str]
    passes: list[str]
    regimes: list[str]
    dtypes: dict[str, list[str]]
    sizes: dict[str, list[int]]
    channels: int
    threads: int
    min_run_time: float
    quick: bool


def resolve_config(args: argparse.Namespace) -> Config:
    def fail(msg: str):  # a usage error: one line on stderr and exit status 2, as argparse's own errors
        print(f"fastact-bench kernels: error: {msg}", file=sys.stderr)
        raise SystemExit(2)

    if args.json and args.plot and os.path.realpath(args.json) == os.path.realpath(args.plot):
        fail(f"--json and --plot name the same file ({args.plot}): the plot would overwrite the results")
    cuda_ok = torch.cuda.is_available()
    if args.device == "cuda" and not cuda_ok:
        fail("--device cuda, but torch.cuda.is_available() is False")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or cuda_ok]
    for option in ("ops", "impls", "passes", "regimes", "dtypes", "sizes"):
        text = getattr(args, option)
        if text is not None and not _split(text):  # "" or "," would otherwise mean the default, all
            fail(f"--{option} {text!r} names nothing")

    ops: list[str] = []
    for name in _split(args.ops) or (QUICK_OPS if args.quick else ["all"]):
        names = OP_GROUPS.get(name, [name])
        for n in names:
            if n not in OPS:
                fail(f"unknown op {n!r}; choose from {', '.join(OPS)} or {', '.join(OP_GROUPS)}")
            if n not in ops:
                ops.append(n)
    impls = _unique(_split(args.impls) or [i for i in IMPLS if not (args.quick and i == "compile")])
    passes = _unique(_split(args.passes) or list(PASSES))
    # "both" (the help's word for the default) is user,kernel
    regimes = _unique([r for t in (_split(args.regimes) or ["both"]) for r in (REGIMES if t == "both" else [t])])
    for values, allowed, what in ((impls, IMPLS, "impl"), (passes, PASSES, "pass"),
                                  (regimes, REGIMES + ("both",), "regime")):
        for v in values:
            if v not in allowed:
                fail(f"unknown {what} {v!r}; choose from {', '.join(allowed)}")
    dtypes, sizes = {}, {}
    for d in devices:
        dtypes[d] = _unique(_split(args.dtypes) or (["float32"] if args.quick else list(DEFAULT_DTYPES[d])))
        for dt in dtypes[d]:
            if dt not in DTYPES:
                fail(f"unknown dtype {dt!r}; choose from {', '.join(DTYPES)}")
        try:
            sizes[d] = _unique([parse_size(s) for s in _split(args.sizes)] if args.sizes else (
                [2 ** 20] if args.quick else list(DEFAULT_SIZES[d])))  # after parsing: 20 and 2^20 are one size
        except ValueError as e:
            fail(f"bad --sizes {args.sizes!r} ({e})")
        memory = _device_memory_bytes(d)
        for n in sizes[d]:
            if n < 1:
                fail(f"bad size {n}")
            # x, dy, the outputs and a copy's buffer are alive at once: about 6 tensors of the widest dtype
            need = 6 * n * max(DTYPES[dt].itemsize for dt in dtypes[d])
            if memory is not None and need > memory:
                fail(f"size {n} needs about {need / 2**30:.0f} GiB of {d} memory; this machine has "
                     f"{memory / 2**30:.0f} GiB")
            if n % args.channels and any(OPS[o].per_channel for o in ops):
                fail(f"size {n} is not a multiple of --channels {args.channels} (needed by the per-channel ops)")
    threads = args.threads or torch.get_num_threads()
    mrt = args.min_run_time if args.min_run_time is not None else (QUICK_MIN_RUN_TIME if args.quick else 0.5)
    return Config(devices, ops, impls, passes, regimes, dtypes, sizes, args.channels, threads, mrt, args.quick)


def planned_rows(cfg: Config) -> list[tuple]:
    """Every row the run will produce: (device, dtype, numel, op, regime, impl, pass)."""
    rows = []
    for device in cfg.devices:
        for dtype in cfg.dtypes[device]:
            for numel in cfg.sizes[device]:
                for op in cfg.ops:
                    for regime in cfg.regimes:
                        for impl in cfg.impls:
                            if _impl_available(OPS[op], impl, regime):
                                rows.extend((device, dtype, numel, op, regime, impl, ps) for ps in cfg.passes)
    return rows


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def machine_info(devices: list[str]) -> dict:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["cpu_isa"] = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "amx_tile")
                           if f in flags]
    except OSError:
        pass
    with contextlib.suppress(OSError):  # transparent huge pages: the mode decides the user regime's page faults
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            info["transparent_hugepage"] = fh.read().strip()
    info["THP_MEM_ALLOC_ENABLE"] = os.environ.get("THP_MEM_ALLOC_ENABLE")  # PyTorch's own huge-page switch
    try:
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        pass
    try:
        fa = _fa()
        info["fastact_version"] = getattr(fa, "__version__", None)
        info["fastact_cpu_capability"] = fa.cpu_capability()
        info["fastact_cpu_huge_pages"] = fa.cpu_huge_pages()
        info["fastact_cpu_streaming_threshold"] = fa.ops.cpu_streaming_threshold()
        info["fastact_cpu_lookup_threshold"] = fa.ops.cpu_lookup_threshold()
        # how the AVX-512 builds read the 16-bit tables (timed once per process): gathers or scalar loads
        info["fastact_cpu_table_gathers"] = fa.ops.cpu_table_gathers()
        info["fastact_cuda_kernels"] = fa.has_cuda_kernels()
    except Exception as exc:  # noqa: BLE001
        info["fastact_error"] = _short_error(exc)
    info["gpu"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["cuda"] = torch.version.cuda
    info["devices_benchmarked"] = devices
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    return info


def _gbps(numel: int, itemsize: int, tensors: int, seconds: float) -> float:
    return tensors * numel * itemsize / seconds / 1e9


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    # disable=None: tqdm leaves the bar out where stderr is not a terminal (a log file, CI)
    return tqdm(total=total, disable=None if enabled else True, unit="row", dynamic_ncols=True, file=sys.stderr)


def run_benchmark(cfg: Config, progress: bool = True) -> dict:
    plan = planned_rows(cfg)
    load_start = None
    with contextlib.suppress(OSError, AttributeError):
        load_start = round(os.getloadavg()[0], 2)
        if "cpu" in cfg.devices and load_start > max(0.5, len(os.sched_getaffinity(0)) - cfg.threads):
            print(f"warning: the 1-minute load average is {load_start} before the run: other processes compete "
                  "for the CPU, and CPU timings will be noisy (with OpenMP threads, many times slower)",
                  file=sys.stderr)
    bar = _progress(len(plan), progress)
    rows: list[dict] = []
    copy_gbps: dict[str, dict[str, dict[str, float]]] = {}
    copy_samples: dict[str, dict[str, dict[str, list[float]]]] = {}
    compiled = Compiled()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    if "compile" in cfg.impls:
        from torch import _dynamo  # noqa: PLC0415
        cfg_dyn = _dynamo.config
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg_dyn, knob):
                setattr(cfg_dyn, knob, max(getattr(cfg_dyn, knob), 64))
    started = time.perf_counter()
    try:
        for device in cfg.devices:
            for dtype_name in cfg.dtypes[device]:
                dtype = DTYPES[dtype_name]
                for numel in cfg.sizes[device]:
                    shape = make_shape(numel, cfg.channels)
                    gen = torch.Generator(device=device).manual_seed(0)
                    x = torch.randn(shape, dtype=dtype, device=device, generator=gen)
                    dy = torch.randn(shape, dtype=dtype, device=device, generator=gen)
                    if bar is not None:
                        bar.set_description(f"{device} {dtype_name} {numel}: copy")
                    copies = [measure_copy_gbps(x, device, cfg.threads, cfg.min_run_time)]
                    copy_out = torch.empty_like(x)  # the kernel regime's paired copy writes here
                    if "compile" in cfg.impls:
                        compiled.reset()
                    for op in cfg.ops:
                        spec = OPS[op]
                        p = _make_param(spec, x, cfg.channels)
                        saved_by_impl: dict[str, int | None] = {}
                        for regime in cfg.regimes:
                            impls = [i for i in cfg.impls if _impl_available(spec, i, regime)]
                            if bar is not None:
                                bar.set_description(f"{device} {dtype_name} {numel}: {op} {regime}")
                            rows.extend(_measure_regime(cfg, spec, impls, regime, x, p, dy, device, dtype_name,
                                                        numel, shape, saved_by_impl, compiled, bar,
                                                        copy_out))
                        del p
                    # copy bandwidth again after the rows; the best of the two is the reference (a busy
                    # moment during one copy measurement would otherwise inflate every copy_fraction)
                    copies.append(measure_copy_gbps(x, device, cfg.threads, cfg.min_run_time))
                    copy = max(copies)
                    copy_gbps.setdefault(device, {}).setdefault(dtype_name, {})[str(numel)] = copy
                    copy_samples.setdefault(device, {}).setdefault(dtype_name, {})[str(numel)] = copies
                    del x, dy, copy_out
                    gc.collect()
                    if device == "cuda":
                        torch.cuda.empty_cache()
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(old_threads)
    add_speedups(rows)
    machine = machine_info(cfg.devices)
    machine["loadavg_1min_start"] = load_start
    return {
        "machine": machine,
        "torch": torch.__version__,
        "threads": cfg.threads,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
        "config": {**dataclasses.asdict(cfg), "channels": cfg.channels},
        "elapsed_s": round(time.perf_counter() - started, 1),
        "copy_gbps": copy_gbps,
        "copy_gbps_samples": copy_samples,
        "ops": {name: OPS[name].description for name in cfg.ops},
        "rows": rows,
    }


def _build_impl(cfg, spec, impl, regime, x, p, dy, saved_by_impl, compiled):
    """The closures of one implementation, per pass, with notes; or the error that prevented them."""
    fns: dict[str, Callable] = {}
    notes: dict[str, str] = {}
    try:
        if regime == "user":
            extra = {}
            if impl == "compile":
                from torch._functorch import config as functorch_config  # noqa: PLC0415
                extra = {"f_bwd": compiled.get(spec, "bwd"),
                         "bwd_context": lambda: functorch_config.patch(donated_buffer=False)}
                notes["bwd"] = "backward graph compiled with torch._functorch.config.donated_buffer=False"
            fns = _user_passes(_impl_fn(spec, impl, compiled), spec, x, p, dy, **extra)
            saved_by_impl[impl] = fns.pop("_saved")()
        else:
            fns, notes = _kernel_passes(spec, impl, x, p, dy)
    except Exception as exc:  # noqa: BLE001  (a failing peer, e.g. torch.compile, is reported, not fatal)
        return {}, notes, _short_error(exc)
    return fns, notes, None


# The copy each regime's rows are measured against, timed in turns with them (its key among the timed
# functions is not an implementation name): into a preallocated buffer for the kernel regime, and into a fresh
# one, with its page faults, for the user regime.
PAIRED_COPY = {"kernel": "y.copy_(x)", "user": "x.clone()"}


def _streams(device: str, impl: str, numel: int, itemsize: int, ps: str) -> bool | None:
    """Whether fastact's CPU kernels use non-temporal stores in this row (csrc/cpu/dispatch.cpp, should_stream:
    the bytes a call touches, 2 tensors forward and 3 backward, exceed the threshold); y.copy_(x) does not, so
    a streamed row can read above 1 of the copy. None where it does not apply."""
    if device != "cpu" or impl != "fastact":
        return None
    touched = numel * itemsize * (2 if ps == "fwd" else 3)
    return touched > _fa().ops.cpu_streaming_threshold()


def _measure_regime(cfg, spec, impls, regime, x, p, dy, device, dtype_name, numel, shape,
                    saved_by_impl, compiled, bar, copy_out: Tensor) -> list[dict]:
    """One row per implementation and pass; the implementations of a pass are timed in turns
    (time_interleaved), so that their ratios compare like with like. The regime's copy (PAIRED_COPY: y.copy_(x)
    into copy_out, or x.clone()) takes its turn with them: each row's copy_fraction is then a ratio of the same
    moments and of the same kind of output."""
    built = {impl: _build_impl(cfg, spec, impl, regime, x, p, dy, saved_by_impl, compiled) for impl in impls}
    out = []
    for ps in cfg.passes:
        to_time = {impl: fns[ps] for impl, (fns, _, error) in built.items() if error is None}
        if to_time:
            to_time[PAIRED_COPY[regime]] = (lambda: copy_out.copy_(x)) if regime == "kernel" else x.clone
        timed = time_interleaved(to_time, device, cfg.threads, cfg.min_run_time)
        copy_t = timed.get(PAIRED_COPY[regime])
        copy_gbps = (_gbps(numel, x.element_size(), 2, copy_t["median_s"])
                     if isinstance(copy_t, dict) else None)
        for impl, (fns, notes, error) in built.items():
            row = {"op": spec.name, "impl": impl, "regime": regime, "dtype": dtype_name, "device": device,
                   "numel": numel, "shape": list(shape), "pass": ps, "median_ms": None, "iqr_ms": None,
                   "gbps": None, "copy_fraction": None,
                   # what autograd keeps for backward: a user-regime notion; the out= kernel calls keep nothing
                   "saved_bytes": saved_by_impl.get(impl) if regime == "user" else None}
            if ps in notes:
                row["note"] = notes[ps]
            streamed = _streams(device, impl, numel, x.element_size(), ps)
            if streamed is not None:
                row["streamed"] = streamed
            t = timed.get(impl)
            if error is not None:
                row["error"] = error
            elif isinstance(t, Exception):
                row["error"] = _short_error(t)
            else:
                gbps = _gbps(numel, x.element_size(), TENSORS_MOVED[ps], t["median_s"])
                row.update(median_ms=t["median_s"] * 1e3, iqr_ms=t["iqr_s"] * 1e3, runs=t["runs"], gbps=gbps)
                if copy_gbps is not None:
                    row.update(copy_gbps=copy_gbps, copy_fraction=gbps / copy_gbps,
                               copy_reference=PAIRED_COPY[regime])
            out.append(row)
            if bar is not None:
                bar.update(1)
    for fns, _, _ in built.values():
        fns.clear()
    return out


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs[peer] = peer median / fastact median, for every fastact row with a measured peer."""
    def key(r):
        return (r["device"], r["dtype"], r["numel"], r["op"], r["regime"], r["pass"])
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault(key(r), {})[r["impl"]] = r
    for r in rows:
        if r["impl"] != "fastact":
            continue
        r["speedup_vs"] = {}
        if not r.get("median_ms"):
            continue
        for peer, pr in by_key[key(r)].items():
            if peer != "fastact" and pr.get("median_ms"):
                r["speedup_vs"][peer] = pr["median_ms"] / r["median_ms"]


# --------------------------------------------------------------------------------------------------
# Targets (issue 3)
# --------------------------------------------------------------------------------------------------
def _size_label(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def copy_target(device: str, op: str) -> float:
    """Target 4: the kernel regime's fraction of the copy bandwidth (fwd and bwd) at the large size."""
    return 0.85 if device == "cuda" else (0.6 if op == "mish" else 0.8)


# The sizes of issue 3's bandwidth targets: the memory-bound regime.
BANDWIDTH_SIZE = {"cpu": 2 ** 24, "cuda": 2 ** 28}


@dataclasses.dataclass(frozen=True)
class Target:
    """One of issue 3's targets for an op on a device: the worst value over its passes and sizes decides.
    peer None: fastact's fraction of the copy bandwidth; else peer time / fastact time (cmp ">="), or fastact
    time / peer time (cmp "<=")."""
    name: str
    cmp: str
    threshold: float
    regime: str
    passes: tuple[str, ...]
    size: int | None  # None: every size run
    peer: str | None


def target_definitions(device: str, op: str) -> list[Target]:
    """Issue 3's targets. CPU: not slower than native (SiLU, LeakyReLU, PReLU; fwd and fwd+bwd, every size);
    Mish 5x native at 2^20; learnable Swish-beta and per-channel PReLU fwd+bwd 3x eager and not slower than
    torch.compile; the kernel alone at 2^24, fwd and bwd, 0.8 of the copy bandwidth (Mish 0.6). CUDA: not
    slower than native (every op that has one), and 0.85 of the copy bandwidth at 2^28."""
    targets = []
    native_parity = (("swish", "mish", "leaky_0.5", "leaky_-0.5", "prelu", "prelu_pc") if device == "cuda" else
                     ("swish", "leaky_0.5", "leaky_-0.5", "prelu", "prelu_pc"))
    if op in native_parity:
        targets.append(Target(f"{op}: fastact/native time", "<=", 1.0, "user", ("fwd", "fwd+bwd"), None, "native"))
    if device != "cuda":
        if op == "mish":
            targets.append(Target("mish: speedup vs native at 2^20", ">=", 5.0, "user", ("fwd", "fwd+bwd"), 2 ** 20,
                                  "native"))
        if op in ("swish_beta", "swish_beta_pc", "prelu_pc"):
            targets += [Target(f"{op}: fwd+bwd speedup vs {peer}", ">=", goal, "user", ("fwd+bwd",), None, peer)
                        for peer, goal in (("eager", 3.0), ("compile", 1.0))]
    big = BANDWIDTH_SIZE.get(device, 2 ** 24)
    targets.append(Target(f"{op}: kernel fraction of copy bandwidth at {_size_label(big)}", ">=",
                          copy_target(device, op), "kernel", ("fwd", "bwd"), big, None))
    return targets


def speedup_targets(op: str, ps: str, numel: int, device: str = "cpu") -> dict[str, float]:
    """The targets over a peer (user regime) of a row of op, pass and size, as speedups, by peer."""
    return {t.peer: (1 / t.threshold if t.cmp == "<=" else t.threshold) for t in target_definitions(device, op)
            if t.peer and ps in t.passes and t.size in (None, numel)}


def compute_targets(result: dict) -> list[dict]:
    """Each of issue 3's targets for the devices, dtypes and ops of the run: the worst value over its passes and
    sizes, and where. ok is False where a row it needs was run and failed (a failure is not a pass), None where
    none of its rows was run (a size, pass or peer left out of this run: "not_run" lists them)."""
    rows = result["rows"]
    targets: list[dict] = []
    for device, dtype in dict.fromkeys((r["device"], r["dtype"]) for r in rows):
        sel = [r for r in rows if r["device"] == device and r["dtype"] == dtype]
        index = {(r["op"], r["impl"], r["regime"], r["pass"], r["numel"]): r for r in sel}
        sizes_run = sorted({r["numel"] for r in sel})
        ops_run = {r["op"] for r in sel}
        for op in [o for o in OPS if o in ops_run]:
            for t in target_definitions(device, op):
                values, failed, not_run = [], [], []
                for numel in (sizes_run if t.size is None else [t.size]):
                    for ps in t.passes:
                        where = f"{ps} {_size_label(numel)}"
                        needed = {impl: index.get((op, impl, t.regime, ps, numel))
                                  for impl in ("fastact",) + ((t.peer,) if t.peer else ())}
                        if any(r is None for r in needed.values()):
                            not_run.append(where)
                            continue
                        broken = [impl for impl, r in needed.items() if not r.get("median_ms")]
                        fa = needed["fastact"]
                        if not t.peer and fa.get("copy_fraction") is None:
                            broken.append("copy")
                        if broken:
                            failed.append(f"{'/'.join(broken)} {where}")
                            continue
                        # the widest interquartile range, relative to its median, of the rows compared
                        spread = max((r.get("iqr_ms") or 0.0) / r["median_ms"] for r in needed.values())
                        if t.peer:
                            speedup = needed[t.peer]["median_ms"] / fa["median_ms"]
                            values.append((1 / speedup if t.cmp == "<=" else speedup, where, spread))
                        else:
                            values.append((fa["copy_fraction"], where, spread))
                entry = {"device": device, "dtype": dtype, "target": t.name, "cmp": t.cmp, "threshold": t.threshold,
                         "value": None, "where": None, "spread": None, "ok": None, "failed": failed,
                         "not_run": not_run}
                if values:
                    worst = (max if t.cmp == "<=" else min)(values, key=lambda v: v[0])
                    met = worst[0] <= t.threshold if t.cmp == "<=" else worst[0] >= t.threshold
                    entry.update(value=worst[0], where=worst[1], spread=worst[2], ok=met and not failed)
                if failed:
                    entry["ok"] = False
                targets.append(entry)
    return targets


# --------------------------------------------------------------------------------------------------
# Output: table, targets, plot
# --------------------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if v < 1 else f"{v:.3f}" if v < 100 else f"{v:.1f}"


def _print_table(title: str, header: list[str], body: list[list[str]], console) -> None:
    if console is not None:
        from rich.table import Table  # noqa: PLC0415
        table = Table(title=title, title_justify="left", header_style="bold")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i < 3 else "right", no_wrap=True)
        for line in body:
            table.add_row(*line)
        console.print(table)
        return
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(header)]
    print(title)
    print("  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for line in body:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    print()


def _console():
    try:
        from rich.console import Console  # noqa: PLC0415
        import shutil  # noqa: PLC0415
        return Console(width=max(shutil.get_terminal_size((170, 40)).columns, 170))
    except ImportError:  # pragma: no cover
        return None


def print_results(result: dict, console=None) -> None:
    """One table per device, dtype and size: a line per op, regime and pass, the impls side by side."""
    rows = result["rows"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["device"], r["dtype"], r["numel"]), []).append(r)
    for (device, dtype, numel), rs in groups.items():
        impls = [i for i in IMPLS if any(r["impl"] == i for r in rs)]
        copy = result["copy_gbps"][device][dtype][str(numel)]
        header = ["op", "regime", "pass"] + [f"{i} ms" for i in impls] + [
            "fastact GB/s", "x copy"] + [f"vs {p}" for p in PEERS if p in impls] + ["saved MB fa/peers"]
        lines: dict[tuple, dict[str, dict]] = {}
        for r in rs:
            lines.setdefault((r["op"], r["regime"], r["pass"]), {})[r["impl"]] = r
        body = []
        notes: dict[str, int] = {}  # a row's note, marked by a number after its time
        for (op, regime, ps), by_impl in lines.items():
            fa = by_impl.get("fastact")
            cells = [op, regime, ps]
            for i in impls:
                r = by_impl.get(i)
                mark = "" if r is None or "note" not in r else f" [{notes.setdefault(r['note'], len(notes) + 1)}]"
                cells.append("" if r is None else _fmt_ms(r["median_ms"]) + mark)
            cells += [_fmt(fa and fa["gbps"], ".1f"), _fmt(fa and fa["copy_fraction"], ".2f")]
            sp = (fa or {}).get("speedup_vs", {})
            cells += [f"{sp[p]:.2f}x" if p in sp else "" for p in PEERS if p in impls]
            saved = ""
            if regime == "user" and ps == "fwd+bwd":
                saved = "/".join(_fmt(by_impl[i]["saved_bytes"] / 1e6 if by_impl[i]["saved_bytes"] is not None
                                      else None, ".1f") for i in impls if i in by_impl)
            cells.append(saved)
            body.append(cells)
        title = (f"{device} {dtype} numel={numel} ({_size_label(numel)}), {result['threads']} threads; "
                 f"copy {copy:.1f} GB/s. user = fresh outputs per call, x copy against x.clone(); kernel = "
                 "preallocated out= buffers, x copy against y.copy_(x); each copy timed in turns with the row")
        _print_table(title, header, body, console)
        for note, number in notes.items():
            print(f"[{number}] {note}")
    missing = [r for r in rows if r.get("median_ms") is None]
    if missing:
        seen = set()
        print("Missing rows:")
        for r in missing:
            k = (r["device"], r["dtype"], r["numel"], r["op"], r["impl"], r["regime"], r.get("error"))
            if k in seen:
                continue
            seen.add(k)
            print(f"  {r['device']} {r['dtype']} {r['numel']} {r['op']} {r['impl']} ({r['regime']}): {r.get('error')}")


# A decisive row whose interquartile range exceeds this fraction of its median is marked "noisy" in the targets
# table: its verdict says more about the machine at that moment than about the code. It still counts.
NOISY_SPREAD = 0.25


def _target_cell(t: dict) -> str:
    if t["failed"]:
        return f"FAILED ({', '.join(t['failed'])})"
    if t["ok"] is None:
        return "not run"
    noisy = f"; noisy, IQR {t['spread']:.0%} of median" if (t.get("spread") or 0) > NOISY_SPREAD else ""
    return f"{t['value']:.2f} {'ok' if t['ok'] else 'MISS'} ({t['where']}{noisy})"


def print_targets(targets: list[dict], threads: int | None = None, console=None) -> None:
    if not targets:
        return
    keys = sorted({(t["device"], t["dtype"]) for t in targets}, key=lambda k: (k[0], list(DTYPES).index(k[1])))
    names = list(dict.fromkeys((t["target"], t["cmp"], t["threshold"]) for t in targets))
    header = ["target", "", "goal"] + [f"{d} {dt}" for d, dt in keys]
    body = []
    for name, cmp, thr in names:
        cells = [name, cmp, f"{thr:g}"]
        for d, dt in keys:
            t = next((t for t in targets if (t["target"], t["device"], t["dtype"]) == (name, d, dt)), None)
            cells.append("" if t is None else _target_cell(t))
        body.append(cells)
    judged = [t for t in targets if t["ok"] is not None]
    title = f"Targets (issue 3; worst case over passes and sizes): {sum(t['ok'] for t in judged)}/{len(judged)} met"
    if any(t["failed"] for t in targets):
        title += f" ({sum(bool(t['failed']) for t in targets)} with failed rows, counted as not met)"
    if len(judged) < len(targets):
        title += (f"; {len(targets) - len(judged)} not run (their sizes, passes or peers are not in this run: "
                  "the full run has them)")
    if threads is not None and threads != 2 and any(t["device"] == "cpu" for t in targets):
        title += f"; the CPU targets are set for 2 threads, this run used {threads}"
    _print_table(title, header, body, console)


def plot_figure(result: dict):
    """The matplotlib figure of write_plot: a panel per device and pass of fastact's speedups over its peers
    (user regime), and one per device of the kernel regime's fractions of the copy bandwidth."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    rows = [r for r in result["rows"] if r["impl"] == "fastact" and r.get("median_ms")]
    panels = []
    for device in dict.fromkeys(r["device"] for r in rows):
        for ps in PASSES:
            sel = [r for r in rows if r["device"] == device and r["regime"] == "user" and r["pass"] == ps]
            if any(r.get("speedup_vs") for r in sel):  # not an empty panel when no peer was run
                panels.append(("speedup", device, ps, sel))
        sel = [r for r in rows if r["device"] == device and r["regime"] == "kernel"]
        if sel:
            panels.append(("copy", device, None, sel))
    if not panels:
        panels.append(("empty", None, None, []))
    ngroups = max((len({(r["op"], r["dtype"], r["numel"]) for r in p[3]}) for p in panels), default=1)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.4 * ngroups + 2), 4.2 * len(panels)),
                             squeeze=False)
    colors = {"native": "tab:blue", "eager": "tab:orange", "compile": "tab:green", "fwd": "tab:blue",
              "bwd": "tab:red", "fwd+bwd": "tab:purple"}
    for ax, (kind, device, ps, sel) in zip(axes[:, 0], panels):
        groups = list(dict.fromkeys((r["op"], r["dtype"], r["numel"]) for r in sel))
        labels = [f"{op} {dt.replace('float', 'f')} {_size_label(n)}" for op, dt, n in groups]
        targets: list[tuple[int, str, float]] = []  # (group, series, goal): a dashed mark over the bars
        if kind == "speedup":
            series = [p for p in PEERS if any(p in r.get("speedup_vs", {}) for r in sel)]
            value = lambda r, s: r.get("speedup_vs", {}).get(s)  # noqa: E731
            ax.set_ylabel("fastact speedup (x)")
            ax.set_title(f"{device}, {ps}, user regime: peer time / fastact time (higher is better; "
                         "dashes: targets above 1x)", fontsize=10)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            targets = [(i, peer, goal) for i, (op, _, n) in enumerate(groups)
                       for peer, goal in speedup_targets(op, ps, n, device).items() if goal > 1 and peer in series]
        elif kind == "copy":
            series = [p for p in PASSES if any(r["pass"] == p for r in sel)]
            value = lambda r, s: r["copy_fraction"] if r["pass"] == s else None  # noqa: E731
            ax.set_ylabel("fraction of copy GB/s")
            big = BANDWIDTH_SIZE.get(device, 2 ** 24)
            ax.set_title(f"{device}, kernel regime (preallocated outputs): fastact GB/s / y.copy_(x) GB/s "
                         f"(dashes: target per op, fwd and bwd at {_size_label(big)})", fontsize=10)
            ax.axhline(1.0, color="black", linewidth=0.8)
            targets = [(i, s, copy_target(device, op)) for i, (op, _, n) in enumerate(groups) if n == big
                       for s in ("fwd", "bwd") if s in series]
        else:
            series, value = [], None
            ax.set_title("nothing to plot: no fastact speedups over a peer, no kernel regime rows")
        width = 0.8 / max(1, len(series))
        offset = {s: (j - (len(series) - 1) / 2) * width for j, s in enumerate(series)}
        for s in series:
            xs, hs = [], []
            for i, g in enumerate(groups):
                for r in sel:
                    if (r["op"], r["dtype"], r["numel"]) == g:
                        v = value(r, s)
                        if v is not None:
                            xs.append(i + offset[s])
                            hs.append(v)
            ax.bar(xs, hs, width=width, label=s if kind == "copy" else f"vs {s}", color=colors.get(s))
        for i, s, goal in targets:  # over the bar it applies to, in black: visible over any bar colour
            x0 = i + offset[s]
            ax.hlines(goal, x0 - width / 2, x0 + width / 2, colors="black", linewidth=1.4, linestyles="--",
                      zorder=3, label="_target")
        ax.set_xticks(range(len(groups)))
        # one line per label, slanted: many groups' labels would otherwise overlap
        ax.set_xticklabels(labels, fontsize=7 if len(groups) <= 16 else 6, rotation=35, ha="right",
                           rotation_mode="anchor")
        ax.set_xlim(-0.6, len(groups) - 0.4)
        if series:  # in headroom above the bars (and the target marks), not over them
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi * (hi / lo) ** 0.25 if kind == "speedup" else hi + 0.25 * (hi - lo))
            ax.legend(fontsize=8, ncol=len(series), loc="upper right")
        if kind == "speedup":
            # one set of labelled ticks, as dense as the span allows: labelled minor ticks collide ("0.9x"
            # over "1x"), labels at powers of ten alone leave a narrow span with the "1x" label only
            lo, hi = ax.get_ylim()
            decades = math.log10(hi / lo)
            subs = ((1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0) if decades <= 0.5 else
                    (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades <= 1.2 else (1.0, 2.0, 5.0) if decades <= 3 else (1.0,))
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(axis="y", alpha=0.3)
    machine = result.get("machine", {})
    where = " + ".join(str(v) for v in (machine.get("cpu"), machine.get("gpu")) if v)
    head = f"fastact kernels: {where}" if where else "fastact kernels"  # no stray space without a gpu
    fig.suptitle(f"{head}, torch {result.get('torch')}, {result.get('threads')} threads", fontsize=10)
    fig.tight_layout()
    return fig


def write_plot(result: dict, path: str) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig = plot_figure(result)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def _json_default(o):
    if isinstance(o, torch.dtype):
        return str(o)
    raise TypeError(type(o))


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if "fastact" in cfg.impls:
        try:
            _fa()
        except ImportError as exc:
            print(f"fastact-bench kernels: {exc}", file=sys.stderr)
            return 1
    result = run_benchmark(cfg, progress=not args.no_progress)
    result["options"] = {k: v for k, v in vars(args).items()
                         if k not in ("run", "command") and isinstance(v, (str, int, float, bool, type(None)))}
    result["targets"] = compute_targets(result)
    console = _console()
    if not args.no_table:
        print_results(result, console)
    print_targets(result["targets"], result["threads"], console)
    rc = 0
    # The paths were checked before the run; should a write still fail, say so and keep the rest (the tables
    # above, the JSON in a temporary file, the JSON when the plot fails): a long run is not thrown away.
    if args.json:
        text = json_text(result, indent=1, default=_json_default)
        try:
            write_text(args.json, text)
            print(f"wrote {args.json}")
        except OSError as exc:
            rc = 1
            try:
                fd, fallback = tempfile.mkstemp(prefix="fastact-bench-", suffix=".json")
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                instead = f"; wrote the results to {fallback} instead"
            except OSError as exc2:
                instead = f"; nor to a temporary file: {exc2}"
            print(f"fastact-bench kernels: error: cannot write --json {args.json}: {exc}{instead}", file=sys.stderr)
    if args.plot:
        try:
            write_plot(result, args.plot)
            print(f"wrote {args.plot}")
        except Exception as exc:  # noqa: BLE001  (the results are already out: report, don't crash)
            rc = 1
            print(f"fastact-bench kernels: error: cannot write --plot {args.plot}: {_short_error(exc)}",
                  file=sys.stderr)
    print(f"{len(result['rows'])} rows in {result['elapsed_s']:.1f} s")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastact-bench kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
