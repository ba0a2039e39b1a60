"""Argument checks shared by the homework subcommands.

Values with no meaning are refused while parsing (argparse types: argparse then prints
"fastact-bench loss: error: argument --epochs: ..." and exits 2) rather than failing with a traceback
minutes into a run, or, worse, running something else than asked. Paths are checked at the start of run()
(parsing must not create directories) and fail the same way: one line naming the option, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

__all__ = ["int_at_least", "positive_int", "nonnegative_int", "MAX_THREADS", "thread_count", "positive_float", "finite_float",
           "fail", "output_dir", "read_json", "json_text"]


def int_at_least(low: int, what: str | None = None):
    """An argparse type: an integer >= low."""
    what = what or ("a positive integer" if low == 1 else f"an integer >= {low}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0, "an integer >= 0")

# More threads than this is a typo, not an experiment: torch's OpenMP pool aborts or crashes on tens of thousands.
MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))


def thread_count(text: str) -> int:
    """An argparse type: a number of threads, 1 to MAX_THREADS."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads ({os.cpu_count()} CPUs here), "
                                         f"got {text!r}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def fail(message: str):
    """A usage error found after parsing: one line on stderr and exit status 2, as argparse does."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def output_dir(path: str, option: str = "--out") -> Path:
    """Create the output directory and check that files can be written in it, before any work is done
    (a training run must not end in a traceback when it writes its results)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{option}: cannot create directory {path}: {exc.strerror or exc}")
    if not os.access(out, os.W_OK | os.X_OK):
        fail(f"{option}: directory {path} is not writable")
    return out


def _nonfinite_as_null(obj):
    if isinstance(obj, dict):
        return {k: _nonfinite_as_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nonfinite_as_null(v) for v in obj]
    if isinstance(obj, (str, int, type(None))):  # bool is an int
        return obj
    if isinstance(obj, float) or type(obj).__module__ == "numpy":
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def json_text(obj, **kwargs) -> str:
    """Strict JSON: RFC 8259 has no NaN or Infinity, which Python's json writes by default and jq, browsers and
    most other readers refuse. A non-finite number (a diverged run's loss) is written as null."""
    return json.dumps(_nonfinite_as_null(obj), allow_nan=False, **kwargs)


def read_json(path: str, option: str):
    """The parsed contents of a JSON file, or a usage error naming the option."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        fail(f"{option}: cannot read {path}: {exc.strerror or exc}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"{option}: {path} is not a JSON file ({exc})")
