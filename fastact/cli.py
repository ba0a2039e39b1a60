"""fastact-bench: the command line (also `python -m fastact.bench`).

    fastact-bench kernels   kernel benchmark: fastact vs PyTorch native, eager, torch.compile, memory copy
    fastact-bench plot      homework Q1: Swish / Mish / leaky curves and their derivatives
    fastact-bench mnist     homework Q3: the MNIST inverted-digits alpha sweep, PReLU, Swish, Mish
    fastact-bench loss      homework Q2: MSE vs binary cross-entropy training curves

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "kernels": "fastact.kernel_bench",
    "plot": "fastact.homework.plots",
    "mnist": "fastact.homework.mnist_sweep",
    "loss": "fastact.homework.loss_curves",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastact-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=summary, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
