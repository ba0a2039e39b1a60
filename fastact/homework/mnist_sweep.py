"""homework Q3: the MNIST inverted-digits alpha sweep, PReLU, Swish and Mish, fastact beside PyTorch.

The homework's pipeline and model (fastact/homework/data.py, model.py): MNIST plus an inverted copy of every
image (120,000 train / 20,000 test), a seeded shuffle, scaling to [0, 1], Keras' 15% validation split
(18,000), Conv 8@7x7 - act - Conv 8@5x5 - act - Dense 10 (27,938 weights, glorot-uniform, zero biases),
Adam(lr 1e-3, eps 1e-7), batch 128, 5 epochs, categorical cross-entropy.

Runs (--runs picks a subset): leaky(ALPHA) for each --alphas value (and for any ALPHA that --runs names),
prelu (a learned alpha per filter, Keras' default init 0), swish(1), swish(learned) (a learned beta per filter,
init 1) and mish, with fastact's modules; relu (nn.ReLU: the PyTorch twin of fastact's leaky(0)); logreg (a
linear classifier on the pixels, the baseline for alpha = 1, where the whole net is linear); logreg(orig) (the
same, trained on the original digits only and tested on both polarities: shows what a linear classifier can
reach).

PyTorch-native twins (nn.LeakyReLU, nn.PReLU(8), nn.SiLU, eager x*sigmoid(beta x), nn.Mish) train from the
same seed as their fastact run: the same initial weights and batch order, so the two must train alike. By
default (--impl default) one twin per fastact kernel runs: leaky(-1), prelu, swish(1), swish(learned), mish,
and relu for leaky(0). --impl both twins every run.
The default run set (no --runs, --impl default, one seed) is DEFAULT_RUN_SET;
it took 22 minutes wall on 2 cores (benchmarks/results/REPORT.md).

Train accuracy and loss are, as Keras reports them, the running means over the last epoch's batches;
validation after every epoch, test after the last. Test accuracy is also split by polarity (original /
inverted digits). Runs go to --jobs worker processes of --threads threads each.

Writes to --out: mnist_results.json, mnist_table.md, mnist_curves.png, mnist_sweep.png, mnist_first10.png.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import queue
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .checks import (fail, finite_float, json_text, nonnegative_int, output_dir, positive_float, positive_int,
                     read_json, thread_count)

__all__ = ["RunSpec", "build_specs", "train_run", "run_all", "add_arguments", "run", "ANSWER"]

DEFAULT_ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)
# The homework answer's table (Keras, one run each): alpha -> (train acc, val acc, test acc).
ANSWER = {-1.0: (0.9853, 0.9834, 0.9822), -0.5: (0.9839, 0.9827, 0.9815), 0.0: (0.9818, 0.9756, 0.9789),
          0.5: (0.9726, 0.9687, 0.9742), 1.0: (0.1334, 0.1216, 0.1338)}
# name -> (activation kind, implementations); relu and logreg exist only in PyTorch.
CONFIGS = {
    "prelu": ("prelu", ("fastact", "native")),
    "swish(1)": ("swish", ("fastact", "native")),
    "swish(learned)": ("swish_learn", ("fastact", "native")),
    "mish": ("mish", ("fastact", "native")),
    "relu": ("relu", ("native",)),
    "logreg": ("logreg", ("native",)),
    "logreg(orig)": ("logreg_orig", ("native",)),
}
LINEAR = ("logreg", "logreg_orig")
# With --impl default, the fastact runs that also get a PyTorch-native twin (one per fastact kernel).
DEFAULT_TWINS = ("leaky(-1)", "prelu", "swish(1)", "swish(learned)", "mish")
# A native-only run that is the twin of a fastact run of another name (nn.ReLU vs fastact leaky at slope 0).
TWIN_OF = {"relu": "leaky(0)"}
IMPL_CHOICES = ("default", "both", "fastact", "native")
QUICK = {"limit_train": 2000, "limit_test": 1000, "epochs": 1}
DEFAULT_EPOCHS = 5


def _fmt_alpha(a: float) -> str:
    return f"{a:g}"


def leaky_name(alpha: float) -> str:
    return f"leaky({_fmt_alpha(alpha)})"


@dataclass
class RunSpec:
    name: str
    activation: str  # leaky, prelu, swish, swish_learn, mish, relu, logreg, logreg_orig
    alpha: float | None
    impl: str  # fastact or native
    seed: int


def _leaky_alpha(run: str) -> float | None:
    """The slope of a 'leaky(ALPHA)' run name, None if it is not one."""
    if not (run.startswith("leaky(") and run.endswith(")")):
        return None
    try:
        alpha = float(run[len("leaky("):-1])
    except ValueError:
        return None
    return alpha + 0.0 if math.isfinite(alpha) else None  # + 0.0: -0 is 0, one name leaky(0)


def config_names(alphas) -> list[str]:
    return [leaky_name(a) for a in alphas] + list(CONFIGS)


def build_specs(alphas=DEFAULT_ALPHAS, runs: list[str] | None = None, impl: str = "default",
                seeds=(0,)) -> list[RunSpec]:
    """The runs, ordered so that each fastact run and its native twin are next to each other (with two
    workers they run side by side, under the same load). impl: 'default' (fastact runs, native twins for
    DEFAULT_TWINS), 'both' (a twin for every run), 'fastact' or 'native' only. Native-only configurations
    (relu, logreg, logreg(orig)) run in every mode but 'fastact', and in that one too when `runs` names them."""
    if impl not in IMPL_CHOICES:
        raise ValueError(f"impl must be one of {IMPL_CHOICES}, got {impl!r}")
    names = config_names(alphas)
    explicit = set()
    if runs:
        wanted = []
        for r in runs:
            r = r.strip()
            alpha = _leaky_alpha(r)
            if r == "leaky":
                wanted += [leaky_name(a) for a in alphas]
            elif alpha is not None:  # any slope, not only the --alphas ones; written as leaky_name writes it
                wanted.append(leaky_name(alpha))
                if leaky_name(alpha) not in names:
                    names.insert(sum(n.startswith("leaky(") for n in names), leaky_name(alpha))
            elif r in names:
                wanted.append(r)
            else:
                raise ValueError(f"--runs: unknown run {r!r}; choose from: leaky, leaky(ALPHA) for any "
                                 f"number ALPHA, {', '.join(CONFIGS)}")
        names = [n for n in names if n in wanted]
        explicit = set(wanted)
    specs = []
    for seed in seeds:
        for name in names:
            if name in TWIN_OF and TWIN_OF[name] in names:
                continue  # added right after its twin
            if name.startswith("leaky("):
                alpha = float(name[len("leaky("):-1])
                kind, available = "leaky", ("fastact", "native")
            else:
                kind, available = CONFIGS[name]
                alpha = None
            if available == ("native",):  # with --impl fastact only when --runs names it
                chosen = () if impl == "fastact" and name not in explicit else ("native",)
            elif impl == "default":
                chosen = ("fastact", "native") if name in DEFAULT_TWINS else ("fastact",)
            elif impl == "both":
                chosen = ("fastact", "native")
            else:
                chosen = (impl,)
            specs += [RunSpec(name, kind, alpha, i, seed) for i in chosen]
            if name in TWIN_OF.values():  # relu right after leaky(0), its fastact twin
                specs += [RunSpec(n, CONFIGS[n][0], None, "native", seed) for n, t in TWIN_OF.items()
                          if t == name and n in names and impl != "fastact"]
    seen, unique = set(), []
    for spec in specs:
        key = (spec.name, spec.impl, spec.seed)
        if key not in seen:
            seen.add(key)
            unique.append(spec)
    return unique


def describe_runs(specs: list[RunSpec]) -> str:
    nets = sum(s.activation not in LINEAR for s in specs)
    return f"{len(specs)} runs: {nets} networks and {len(specs) - nets} logistic regressions"


# The help states the size of the default run set, computed here so that it cannot go stale.
__doc__ = __doc__.replace("DEFAULT_RUN_SET", describe_runs(build_specs()))


def execution_order(specs: list[RunSpec]) -> list[int]:
    """Indices of `specs` in the order to run them: twin pairs first (two workers then run a fastact run and
    its native twin side by side, under the same load), single runs next, logreg (quick) last."""
    pairs = {}
    for spec in specs:
        key = (TWIN_OF.get(spec.name, spec.name), spec.seed)
        pairs[key] = pairs.get(key, 0) + 1

    def rank(i):
        spec = specs[i]
        if spec.activation in LINEAR:
            return 2
        return 0 if pairs[(TWIN_OF.get(spec.name, spec.name), spec.seed)] > 1 else 1

    return sorted(range(len(specs)), key=lambda i: (rank(i), i))


# --- training (runs in worker processes too: keep it picklable and self-contained) -------------------
_DATA = None
_EVENTS = None


def _worker_init(data, events, threads):
    global _DATA, _EVENTS
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    _DATA, _EVENTS = data, events


def _worker_run(spec: RunSpec, settings: dict) -> dict:
    def report(*event):
        _EVENTS.put(event)

    return train_run(spec, _DATA, report=report, **settings)


def _batches(x, y, idx, batch_size):
    import numpy as np
    import torch

    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        xb = torch.from_numpy(np.ascontiguousarray(x[sel])).float().div_(255.0)
        yb = torch.from_numpy(y[sel])
        yield xb, yb


def evaluate(model, x, y, inverted=None, batch_size: int = 2000) -> dict:
    """Mean cross-entropy and accuracy over (x, y); with `inverted`, also the accuracy on each polarity."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct = 0.0, np.zeros(len(y), dtype=bool)
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).float().div_(255.0)
            yb = torch.from_numpy(y[start:start + batch_size])
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct[start:start + len(yb)] = (logits.argmax(1) == yb).numpy()
    model.train()
    out = {"loss": loss_sum / len(y), "acc": float(correct.mean())}
    if inverted is not None:
        inv = inverted.astype(bool)
        out["acc_normal"] = float(correct[~inv].mean()) if (~inv).any() else float("nan")
        out["acc_inverted"] = float(correct[inv].mean()) if inv.any() else float("nan")
    return out


def make_model(spec: RunSpec, prelu_init: float = 0.0):
    from .model import HomeworkNet, LinearClassifier

    if spec.activation in LINEAR:
        return LinearClassifier()
    return HomeworkNet.build(spec.activation, spec.impl, spec.alpha, prelu_init=prelu_init)


def training_set(spec: RunSpec, data):
    """The images a run trains on: all of them, or for logreg(orig) the original (not inverted) ones."""
    if spec.activation == "logreg_orig":
        keep = data.train_inverted == 0
        return data.x_train[keep], data.y_train[keep]
    return data.x_train, data.y_train


def train_run(spec: RunSpec, data, epochs: int = 5, batch_size: int = 128, lr: float = 1e-3, eps: float = 1e-7,
              prelu_init: float = 0.0, report=None) -> dict:
    """Train one run; returns its result record. `report(event, ...)` gets progress events."""
    import torch
    import torch.nn.functional as F

    from .model import count_parameters, learned_activation_params

    report = report or (lambda *e: None)
    torch.manual_seed(spec.seed)
    model = make_model(spec, prelu_init)
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
    gen = torch.Generator().manual_seed(spec.seed)
    x_train, y_train = training_set(spec, data)
    n = len(y_train)
    n_batches = math.ceil(n / batch_size)
    run_id = f"{spec.name}/{spec.impl}/s{spec.seed}"
    report("start", run_id, n_batches * epochs)
    history, epoch_seconds = [], []
    model.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen).numpy()  # Keras' fit(shuffle=True)
        loss_sum, correct, seen, pending = 0.0, 0, 0, 0
        for xb, yb in _batches(x_train, y_train, order, batch_size):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            pending += 1
            if pending == 20:
                report("step", run_id, pending)
                pending = 0
        if pending:
            report("step", run_id, pending)
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, data.x_val, data.y_val)
        epoch_seconds.append(round(train_seconds, 3))
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "val_loss": val["loss"], "val_acc": val["acc"], "seconds": round(train_seconds, 3)}
        history.append(record)
        report("epoch", run_id, record)
    test = evaluate(model, data.x_test, data.y_test, data.test_inverted)
    last = history[-1]
    result = {
        "name": spec.name, "activation": spec.activation, "alpha": spec.alpha, "impl": spec.impl,
        "seed": spec.seed,
        "train_acc": last["train_acc"], "val_acc": last["val_acc"], "test_acc": test["acc"],
        "train_loss": last["train_loss"], "val_loss": last["val_loss"], "test_loss": test["loss"],
        "test_acc_normal": test["acc_normal"], "test_acc_inverted": test["acc_inverted"],
        "history": history, "epoch_seconds": epoch_seconds,
        "parameters": count_parameters(model), "parameters_with_activations": count_parameters(model, True),
        "learned": learned_activation_params(model), "threads": torch.get_num_threads(),
    }
    report("end", run_id, result)
    return result


# --- running many: in-process or in worker processes, with progress bars --------------------------------
class _Progress:
    def __init__(self, total_batches: int, slots: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.tqdm = tqdm
        # disable=None: tqdm leaves the bars out where stderr is not a terminal (a log file, CI)
        self.disable = None if enabled else True
        self.overall = tqdm(total=total_batches, desc="all runs", unit="batch", position=0, disable=self.disable,
                            dynamic_ncols=True)
        self.free = list(range(1, slots + 1))
        self.bars = {}

    def handle(self, event, run_id, payload=None):
        if event == "start":
            pos = self.free.pop(0) if self.free else None
            bar = self.tqdm(total=payload, desc=run_id, unit="batch", position=pos, leave=False,
                            disable=self.disable, dynamic_ncols=True)
            self.bars[run_id] = (bar, pos)
        elif event == "step":
            self.bars[run_id][0].update(payload)
            self.overall.update(payload)
        elif event == "epoch":
            r = payload
            self.bars[run_id][0].set_postfix(epoch=r["epoch"], loss=f"{r['train_loss']:.3f}",
                                             val_acc=f"{r['val_acc']:.4f}")
        elif event == "end":
            bar, pos = self.bars.pop(run_id)
            bar.close()
            if pos is not None:
                self.free.append(pos)
                self.free.sort()
            self.write(_result_line(payload))

    def write(self, text):
        self.tqdm.write(text, file=sys.stdout)

    def close(self):
        for bar, _ in self.bars.values():
            bar.close()
        self.overall.close()


def _result_line(r: dict) -> str:
    line = (f"{r['name']:>15} {r['impl']:>7} seed {r['seed']}: train {r['train_acc']:.4f} val {r['val_acc']:.4f} "
            f"test {r['test_acc']:.4f} (orig {r['test_acc_normal']:.4f} / inv {r['test_acc_inverted']:.4f}) "
            f"test loss {r['test_loss']:.4f}, {sum(r['epoch_seconds']):.0f} s")
    return line


def run_all(specs: list[RunSpec], data, settings: dict, jobs: int = 1, threads: int = 1,
            progress: bool = True) -> list[dict]:
    """Train every spec; returns results in the order of `specs`."""
    import torch

    batch_size, epochs = settings.get("batch_size", 128), settings.get("epochs", 5)
    total = sum(math.ceil(len(training_set(s, data)[1]) / batch_size) * epochs for s in specs)
    bars = _Progress(total, max(1, min(jobs, len(specs))), enabled=progress)
    results: list[dict | None] = [None] * len(specs)
    try:
        if jobs <= 1 or len(specs) <= 1:
            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for i, spec in enumerate(specs):
                    results[i] = train_run(spec, data, report=bars.handle, **settings)
            finally:
                torch.set_num_threads(old)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("spawn")
            events = ctx.Queue()
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                     initargs=(data, events, threads)) as pool:
                futures = {pool.submit(_worker_run, spec, settings): i for i, spec in enumerate(specs)}
                pending = set(futures)
                while pending:
                    try:
                        bars.handle(*events.get(timeout=0.2))
                    except queue.Empty:
                        pass
                    for f in [f for f in pending if f.done()]:
                        pending.discard(f)
                        results[futures[f]] = f.result()  # re-raises a worker's exception
                while True:  # the last events
                    try:
                        bars.handle(*events.get(timeout=0.5))
                    except queue.Empty:
                        break
    finally:
        bars.close()
    return results


# --- reporting ------------------------------------------------------------------------------------------
def _mean_std(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s


METRICS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "test_acc_normal",
           "test_acc_inverted")


def summarize(results: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds for each (name, impl)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["name"], r["impl"]), []).append(r)
    rows = []
    for (name, impl), rs in groups.items():
        row = {"name": name, "impl": impl, "activation": rs[0]["activation"], "alpha": rs[0]["alpha"],
               "seeds": [r["seed"] for r in rs], "n": len(rs)}
        for k in METRICS:
            row[k], row[k + "_std"] = _mean_std([r[k] for r in rs])
        row["epoch_seconds_mean"] = _mean_std([sum(r["epoch_seconds"]) / len(r["epoch_seconds"]) for r in rs])[0]
        rows.append(row)
    return rows


def twin_differences(results: list[dict]) -> list[dict]:
    """fastact minus native, per (name, seed): final metrics and the largest per-epoch difference."""
    by = {(r["name"], r["seed"], r["impl"]): r for r in results}
    for native_name, fastact_name in TWIN_OF.items():  # relu (native) is the twin of leaky(0) (fastact)
        for (name, seed, impl), r in list(by.items()):
            if name == native_name and impl == "native" and (fastact_name, seed, "native") not in by:
                by[(fastact_name, seed, "native")] = r
    out = []
    for (name, seed, impl), fa in by.items():
        if impl != "fastact" or (name, seed, "native") not in by:
            continue
        na = by[(name, seed, "native")]
        d = {"name": name if na["name"] == name else f"{name} vs {na['name']}", "seed": seed}
        for k in ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss"):
            d[k] = fa[k] - na[k]
        d["max_epoch_val_loss_diff"] = max(abs(a["val_loss"] - b["val_loss"])
                                           for a, b in zip(fa["history"], na["history"]))
        d["fastact_epoch_s"] = sum(fa["epoch_seconds"]) / len(fa["epoch_seconds"])
        d["native_epoch_s"] = sum(na["epoch_seconds"]) / len(na["epoch_seconds"])
        out.append(d)
    return out


def _cell(row, key, digits=4):
    m, s = row[key], row[key + "_std"]
    if isinstance(m, float) and math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if row["n"] == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def format_table(summary: list[dict], twins: list[dict]) -> str:
    lines = ["| run | impl | seeds | train acc | val acc | test acc | test acc orig / inv | train loss | val loss "
             "| test loss | s/epoch | answer train / val / test acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        ans = ANSWER.get(row["alpha"]) if row["activation"] == "leaky" else None
        ans_txt = " / ".join(f"{v:.4f}" for v in ans) if ans else ""
        inv = f"{row['test_acc_normal']:.4f} / {row['test_acc_inverted']:.4f}"
        lines.append(f"| {row['name']} | {row['impl']} | {row['n']} | {_cell(row, 'train_acc')} | "
                     f"{_cell(row, 'val_acc')} | {_cell(row, 'test_acc')} | {inv} | {_cell(row, 'train_loss')} | "
                     f"{_cell(row, 'val_loss')} | {_cell(row, 'test_loss')} | {row['epoch_seconds_mean']:.1f} | "
                     f"{ans_txt} |")
    if twins:
        lines += ["", "fastact minus PyTorch-native, same seed (same initial weights and batch order):", "",
                  "| run | seed | test acc diff | test loss diff | max per-epoch val loss diff "
                  "| s/epoch fastact / native |",
                  "|---|---|---|---|---|---|"]
        for d in twins:
            lines.append(f"| {d['name']} | {d['seed']} | {d['test_acc']:+.4f} | {d['test_loss']:+.5f} | "
                         f"{d['max_epoch_val_loss_diff']:.5f} | "
                         f"{d['fastact_epoch_s']:.1f} / {d['native_epoch_s']:.1f} |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_first10(data, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, 5, figsize=(10, 5.2))
    for i, ax in enumerate(axes.flat):
        ax.imshow(data.x_train[i, 0], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"label {int(data.y_train[i])}" + (" (inverted)" if data.train_inverted[i] else ""),
                     fontsize=9)
        # a thin frame instead of axis("off"): an inverted (white) image would otherwise have no visible edge
        # and the titles of the second row would seem to run into the first row's images
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set(color="0.6", linewidth=0.8)
    fig.suptitle("First 10 training images after inversion and shuffle")
    fig.tight_layout(h_pad=1.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_history(rs: list[dict], key: str):
    epochs = len(rs[0]["history"])
    return [sum(r["history"][e][key] for r in rs) / len(rs) for e in range(epochs)]


def save_curves(results: list[dict], path: Path) -> None:
    """Per run: accuracy (top) and loss (bottom) per epoch, train dashed and validation solid, fastact (wide,
    pale) and native (thin, on top) in different colours, so that twins that train alike show as one line
    inside the other (mean over seeds)."""
    plt = _plt()
    names = list(dict.fromkeys(r["name"] for r in results))
    ncols = min(len(names), 6)
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(3.2 * ncols, 5.2 * nrows), squeeze=False)
    colors = {"fastact": "tab:blue", "native": "tab:orange"}
    widths = {"fastact": dict(lw=4.0, alpha=0.45, marker="o", ms=5), "native": dict(lw=1.3, marker=".")}
    for k, name in enumerate(names):
        ax_acc = axes[2 * (k // ncols)][k % ncols]
        ax_loss = axes[2 * (k // ncols) + 1][k % ncols]
        for impl in ("fastact", "native"):
            rs = [r for r in results if r["name"] == name and r["impl"] == impl]
            if not rs:
                continue
            ep = [h["epoch"] for h in rs[0]["history"]]
            for key, style in (("train", "--"), ("val", "-")):
                ax_acc.plot(ep, _mean_history(rs, f"{key}_acc"), style, color=colors[impl], **widths[impl],
                            label=f"{impl} {key}")
                ax_loss.plot(ep, _mean_history(rs, f"{key}_loss"), style, color=colors[impl], **widths[impl],
                             label=f"{impl} {key}")
        ax_acc.set_title(name)
        ax_acc.set_ylabel("accuracy")
        ax_loss.set_ylabel("loss")
        ax_loss.set_xlabel("epoch")
        for ax in (ax_acc, ax_loss):
            ax.grid(alpha=0.3)
        if k == 0:
            ax_acc.legend(fontsize=7)
    for k in range(len(names), nrows * ncols):
        axes[2 * (k // ncols)][k % ncols].axis("off")
        axes[2 * (k // ncols) + 1][k % ncols].axis("off")
    fig.suptitle("MNIST + inverted digits: accuracy and loss per epoch (dashed: train, solid: validation; "
                 "blue: fastact, orange: PyTorch native)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_sweep(results: list[dict], path: Path) -> None:
    """The homework's comparison: validation accuracy and loss per epoch of every activation (fastact runs,
    mean over seeds), and final test accuracy beside the answer's."""
    plt = _plt()
    fa = [r for r in results if r["impl"] == "fastact"] or results
    names = list(dict.fromkeys(r["name"] for r in fa))
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.8))
    for name in names:
        rs = [r for r in fa if r["name"] == name]
        ep = [h["epoch"] for h in rs[0]["history"]]
        a1.plot(ep, _mean_history(rs, "val_acc"), marker="o", label=name)
        a2.plot(ep, _mean_history(rs, "val_loss"), marker="o", label=name)
    a1.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    a2.set(title="validation loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    a1.legend(fontsize=8)
    # in order of alpha (runs come in the order asked for), so that the line joins neighbouring alphas
    leaky = sorted((n for n in names if n.startswith("leaky(")), key=lambda n: float(n[6:-1]))
    xs = [float(n[6:-1]) for n in leaky]
    means = [_mean_std([r["test_acc"] for r in fa if r["name"] == n]) for n in leaky]
    if leaky:
        a3.errorbar(xs, [m for m, _ in means], yerr=[s for _, s in means], marker="o", capsize=4,
                    label=f"this reproduction ({fa[0]['impl']})")
        ans = [(a, ANSWER[a][2]) for a in xs if a in ANSWER]
        if ans:
            a3.plot([a for a, _ in ans], [v for _, v in ans], "s--", color="gray", label="homework answer (Keras)")
        a3.set(title="test accuracy vs leaky alpha", xlabel="alpha", ylabel="test accuracy")
        a3.legend(fontsize=8)
    else:
        a3.axis("off")
    for ax in (a1, a2, a3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


# --- CLI -------------------------------------------------------------------------------------------------
def _float_list(text: str) -> list[float]:
    """argparse type of --alphas: one or more finite numbers, comma-separated."""
    try:
        values = [float(v) + 0.0 for v in text.split(",") if v.strip()]  # + 0.0: -0 is 0, one name leaky(0)
    except ValueError:
        values = []
    if not values or not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. --alphas=-1,0,1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    g.add_argument("--data-dir", help="directory with the four IDX files (raw or .gz; flat or MNIST/raw)")
    g.add_argument("--download", action="store_true", help="fetch the IDX files from the public mirrors "
                   "(md5-checked) when no local source is found")
    g.add_argument("--data-seed", type=nonnegative_int, default=0,
                   help="seed of the one shuffle of the training set (default 0)")
    r = parser.add_argument_group("runs")
    r.add_argument("--runs", help="comma-separated subset of: leaky (every --alphas value), leaky(ALPHA) (any "
                   "ALPHA, in --alphas or not), prelu, swish(1), swish(learned), mish, relu, logreg, logreg(orig) "
                   "(default: all)")
    r.add_argument("--alphas", type=_float_list, default=list(DEFAULT_ALPHAS),
                   help="leaky-ReLU slopes to sweep, written with '=' because of the minus signs: --alphas=-1,0,1 "
                   "(default -1,-0.5,0,0.5,1)")
    r.add_argument("--impl", choices=IMPL_CHOICES, default="default",
                   help="default: fastact runs plus a PyTorch-native twin (same seed) for "
                   f"{', '.join(DEFAULT_TWINS)} and relu; both: a twin for every run; fastact / native: only those")
    r.add_argument("--seed", type=int, default=0, help="first seed (weights init and batch order)")
    r.add_argument("--seeds", type=positive_int, default=1, metavar="K",
                   help="repeat every run with K seeds: seed .. seed+K-1 (default 1)")
    # None: the default of the mode (--quick or not), so that an explicit value is always kept
    r.add_argument("--epochs", type=positive_int, default=None,
                   help=f"epochs (default {DEFAULT_EPOCHS}; {QUICK['epochs']} with --quick)")
    r.add_argument("--batch-size", type=positive_int, default=128)
    r.add_argument("--lr", type=positive_float, default=1e-3)
    r.add_argument("--adam-eps", type=positive_float, default=1e-7, help="Adam epsilon (Keras' default 1e-7)")
    r.add_argument("--prelu-init", type=finite_float, default=0.0,
                   help="PReLU's initial alpha (Keras' default 0)")
    r.add_argument("--quick", action="store_true", help=f"{2 * QUICK['limit_train']:,} training and "
                   f"{2 * QUICK['limit_test']:,} test images (with the inverted copies), one epoch: a smoke test")
    e = parser.add_argument_group("execution and output")
    e.add_argument("--jobs", type=positive_int, default=None,
                   help="worker processes running runs side by side (default: 1 with --quick, else min(2, CPUs))")
    # one thread per worker: tiny convs gain little from more, and lose a lot when another process shares
    # the cores (OpenMP threads then wait on each other)
    e.add_argument("--threads", type=thread_count, default=1, help="torch threads per worker (default 1)")
    e.add_argument("--out", default="homework-results", help="output directory (default ./homework-results)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--from-json", metavar="PATH", nargs="+", help="train nothing: rebuild the table and "
                   "figures in --out from earlier runs' mnist_results.json (several: their runs together, e.g. "
                   "the same runs with other seeds)")


def write_reports(results: list[dict], out: Path) -> str:
    """Table (printed and mnist_table.md), learned parameters, mnist_curves.png and mnist_sweep.png."""
    summary = summarize(results)
    twins = twin_differences(results)
    table = format_table(summary, twins)
    print()
    print(table)
    learned = [r for r in results if r["activation"] in ("prelu", "swish_learn")]
    if learned:
        print("\nlearned activation parameters per filter (conv1 = act1, conv2 = act2):")
        for r in learned:
            what = "alpha" if r["activation"] == "prelu" else "beta"
            for layer, values in r["learned"].items():
                print(f"  {r['name']:>15} {r['impl']:>7} seed {r['seed']} {layer} {what}: "
                      + " ".join(f"{v:+.3f}" for v in values))
    (out / "mnist_table.md").write_text(table + "\n")
    save_curves(results, out / "mnist_curves.png")
    save_sweep(results, out / "mnist_sweep.png")
    return table


def results_json(meta: dict, results: list[dict]) -> str:
    """mnist_results.json: strict JSON, so a diverged run's NaN losses are nulls (read back by runs_from_json)."""
    return json_text({"meta": meta, "runs": results, "summary": summarize(results),
                      "fastact_minus_native": twin_differences(results)}, indent=1)


def _null_as_nan(run: dict) -> dict:
    """A run read back from JSON, with the metrics that json_text wrote as null (NaN, inf) as NaN again."""
    run = dict(run)
    for key in METRICS:
        if key in run and run[key] is None:
            run[key] = math.nan
    if isinstance(run.get("history"), list):
        run["history"] = [{k: math.nan if v is None else v for k, v in epoch.items()} if isinstance(epoch, dict)
                          else epoch for epoch in run["history"]]
    if isinstance(run.get("learned"), dict):  # a diverged PReLU's or learnable Swish's parameters
        run["learned"] = {layer: [math.nan if v is None else v for v in values] if isinstance(values, list)
                          else values for layer, values in run["learned"].items()}
    return run


def run(args) -> int:
    from .data import DataError, load_dataset, prepare

    if args.from_json:
        results = []
        for path in args.from_json:
            saved = read_json(path, "--from-json")
            runs = saved.get("runs") if isinstance(saved, dict) else None
            if not isinstance(runs, list) or not all(isinstance(r, dict) and "history" in r for r in runs):
                fail(f"--from-json: {path} is not the mnist_results.json of a `fastact-bench mnist` run "
                     "(it has no list of runs)")
            results += [_null_as_nan(r) for r in runs]
        if not results:
            fail(f"--from-json: no runs in {', '.join(args.from_json)}")
        # Runs are averaged per name over seeds: they must be distinct runs of the same length.
        keys = ("name", "impl", "seed", "history", "test_acc")
        if not all(k in r for r in results for k in keys):
            fail(f"--from-json: a run lacks one of {', '.join(keys)}")
        if len({len(r["history"]) for r in results}) > 1:
            fail(f"--from-json: the runs have different numbers of epochs "
                 f"({sorted({len(r['history']) for r in results})}); merge runs of one setting")
        seen = set()
        for r in results:
            key = (r["name"], r["impl"], r["seed"])
            if key in seen:
                fail(f"--from-json: run {r['name']} ({r['impl']}) seed {r['seed']} appears twice")
            seen.add(key)
        out = output_dir(args.out)
        write_reports(results, out)
        print(f"\nwrote {out}/mnist_table.md, mnist_curves.png, mnist_sweep.png from {', '.join(args.from_json)}")
        return 0

    t_start = time.perf_counter()
    cpus = os.cpu_count() or 1
    jobs = args.jobs if args.jobs is not None else (1 if args.quick else max(1, min(2, cpus)))
    threads = args.threads
    epochs = args.epochs if args.epochs is not None else (QUICK["epochs"] if args.quick else DEFAULT_EPOCHS)
    seeds = list(range(args.seed, args.seed + args.seeds))
    try:
        specs = build_specs(args.alphas, args.runs.split(",") if args.runs else None, args.impl, seeds)
    except ValueError as e:
        fail(str(e))
    if not specs:
        print("no runs selected", file=sys.stderr)
        return 2
    out = output_dir(args.out)  # now, not when the results are written
    if any(s.impl == "fastact" for s in specs):
        import fastact  # noqa: F401  (fails here, clearly, if the extension is not built)

    try:
        raw = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"data: {raw.source}")
    print(f"loaded: x_train {raw.x_train.shape}, y_train {raw.y_train.shape}, x_test {raw.x_test.shape}, "
          f"y_test {raw.y_test.shape}")
    limits = {"limit_train": QUICK["limit_train"], "limit_test": QUICK["limit_test"]} if args.quick else {}
    data = prepare(raw, seed=args.data_seed, **limits)
    del raw
    inv = data.info["after_inversion"]
    print(f"with inverted copies: train {inv['train']:,}, test {inv['test']:,}; shuffled (seed {args.data_seed})")
    for k, v in data.shapes().items():
        print(f"  {k:15s} {v}")
    print(f"validation split {data.info['val_fraction']:.0%}: {len(data.y_val):,} validation, "
          f"{len(data.y_train):,} training images; pixels scaled to [0, 1]")
    save_first10(data, out / "mnist_first10.png")

    settings = {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "eps": args.adam_eps,
                "prelu_init": args.prelu_init}
    print(f"{len(specs)} runs x {epochs} epochs, batch {args.batch_size}, Adam(lr={args.lr:g}, eps={args.adam_eps:g}); "
          f"{jobs} job(s) x {threads} thread(s); seeds {seeds}")
    order = execution_order(specs)
    ordered = run_all([specs[i] for i in order], data, settings, jobs=jobs, threads=threads,
                      progress=not args.no_progress)
    results = [None] * len(specs)
    for i, r in zip(order, ordered):
        results[i] = r

    write_reports(results, out)
    wall = time.perf_counter() - t_start
    meta = {
        "args": {k: v for k, v in vars(args).items() if k != "run"},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "torch": __import__("torch").__version__,
        "data": data.info, "shapes": {k: list(v) for k, v in data.shapes().items()},
        "settings": settings, "seeds": seeds, "data_seed": args.data_seed, "quick": bool(args.quick),
        "jobs": jobs, "threads": threads, "wall_seconds": round(wall, 1),
    }
    try:
        import fastact

        meta["fastact"] = getattr(fastact, "__version__", "?")
        meta["fastact_cpu_capability"] = fastact.cpu_capability()
    except Exception:  # native-only runs do not need the extension
        pass
    (out / "mnist_results.json").write_text(results_json(meta, results))
    print(f"\nwrote {out}/mnist_results.json, mnist_table.md, mnist_curves.png, mnist_sweep.png, "
          f"mnist_first10.png in {wall:.0f} s")
    return 0
