"""The kernel benchmark (`fastact-bench kernels`, fastact/kernel_bench.py), run in-process on a tiny
configuration: every requested row is there with a positive finite time, the JSON follows the schema of
issue 3, the plot is written. Nothing here asserts anything about speed."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from fastact import kernel_bench as kb

NUMEL = 4096  # (1, 64, 8, 8)
ROW_KEYS = {"op", "impl", "dtype", "device", "numel", "pass", "median_ms", "gbps", "saved_bytes", "regime",
            "copy_fraction"}


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    kb.add_arguments(parser)
    return kb.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel_bench")
    json_path, plot_path = out / "bench.json", out / "bench.png"
    rc = run_cli(["--quick", "--device", "cpu", "--sizes", str(NUMEL), "--dtypes", "float32,bfloat16",
                  "--impls", "fastact,native,eager", "--min-run-time", "0.002", "--threads", "1",
                  "--no-progress", "--no-table", "--json", str(json_path), "--plot", str(plot_path)])
    assert rc == 0
    return json.loads(json_path.read_text()), plot_path


def test_json_schema(tiny_run):
    result, _ = tiny_run
    assert {"machine", "torch", "threads", "copy_gbps", "rows"} <= set(result)
    assert result["torch"] == torch.__version__
    assert result["threads"] == 1
    machine = result["machine"]
    assert machine["fastact_cpu_capability"] in ("default", "avx2", "avx512")
    assert machine["cpu"] and machine["cpu_count"] >= 1
    for dtype in ("float32", "bfloat16"):
        copy = result["copy_gbps"]["cpu"][dtype][str(NUMEL)]
        assert math.isfinite(copy) and copy > 0
    for row in result["rows"]:
        assert ROW_KEYS <= set(row), row
        assert row["pass"] in ("fwd", "fwd+bwd", "bwd")
        assert row["regime"] in ("user", "kernel")
        assert row["device"] == "cpu" and row["numel"] == NUMEL


def test_every_requested_row_is_measured(tiny_run):
    result, _ = tiny_run
    rows = result["rows"]
    got = [(r["op"], r["impl"], r["regime"], r["dtype"], r["pass"]) for r in rows]
    assert len(got) == len(set(got)), "duplicate rows"
    expected = set()
    for op, spec in kb.OPS.items():
        for dtype in ("float32", "bfloat16"):
            for ps in ("fwd", "fwd+bwd", "bwd"):
                expected.add((op, "fastact", "user", dtype, ps))
                expected.add((op, "fastact", "kernel", dtype, ps))
                expected.add((op, "eager", "user", dtype, ps))
                if spec.native is not None:
                    expected.add((op, "native", "user", dtype, ps))
                if spec.native_kernel is not None:
                    expected.add((op, "native", "kernel", dtype, ps))
    assert set(got) == expected
    for r in rows:
        assert r["median_ms"] is not None, r.get("error")
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        assert math.isfinite(r["gbps"]) and r["gbps"] > 0, r
        bytes_moved = kb.TENSORS_MOVED[r["pass"]] * NUMEL * (4 if r["dtype"] == "float32" else 2)
        assert r["gbps"] == pytest.approx(bytes_moved / (r["median_ms"] * 1e-3) / 1e9)
        copy = result["copy_gbps"]["cpu"][r["dtype"]][str(NUMEL)]
        assert r["copy_fraction"] == pytest.approx(r["gbps"] / copy)


def test_speedups_and_saved_bytes(tiny_run):
    result, _ = tiny_run
    rows = result["rows"]
    index = {(r["op"], r["impl"], r["regime"], r["dtype"], r["pass"]): r for r in rows}
    for r in rows:
        if r["regime"] == "user":
            assert isinstance(r["saved_bytes"], int) and r["saved_bytes"] >= 0
        if r["impl"] != "fastact":
            continue
        for peer, value in r["speedup_vs"].items():
            other = index[(r["op"], peer, r["regime"], r["dtype"], r["pass"])]
            assert value == pytest.approx(other["median_ms"] / r["median_ms"])
        if r["regime"] == "user":
            assert "eager" in r["speedup_vs"]
            # fastact's forward keeps the input (and the small parameter) for backward, nothing else
            itemsize = 4 if r["dtype"] == "float32" else 2
            assert NUMEL * itemsize <= r["saved_bytes"] <= NUMEL * itemsize + 1024, r
    # eager mish keeps intermediates on top of x
    m = index[("mish", "eager", "user", "float32", "fwd+bwd")]
    assert m["saved_bytes"] > NUMEL * 4


def test_plot_and_targets(tiny_run):
    result, plot_path = tiny_run
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_path.stat().st_size > 10_000
    targets = result["targets"]
    names = {t["target"] for t in targets}
    assert "mish: speedup vs native at 2^20" not in names  # only 4096 elements were run
    assert "swish: fastact/native time" in names
    assert "swish_beta_pc: fwd+bwd speedup vs eager" in names
    assert "prelu: kernel fraction of copy bandwidth" in names
    for t in targets:
        assert t["ok"] == (t["value"] <= t["threshold"] if t["cmp"] == "<=" else t["value"] >= t["threshold"])


def test_failing_compile_is_reported_not_fatal(tmp_path, monkeypatch):
    def broken(self, spec, variant=""):
        raise RuntimeError("inductor exploded")
    monkeypatch.setattr(kb.Compiled, "get", broken)
    json_path = tmp_path / "b.json"
    rc = run_cli(["--quick", "--device", "cpu", "--sizes", "2^12", "--ops", "mish", "--impls", "fastact,compile",
                  "--passes", "fwd,bwd", "--regimes", "user", "--min-run-time", "0.002", "--no-progress",
                  "--json", str(json_path), "--plot", str(tmp_path / "b.png")])
    assert rc == 0
    rows = json.loads(json_path.read_text())["rows"]
    assert {(r["impl"], r["pass"]) for r in rows} == {("fastact", "fwd"), ("fastact", "bwd"), ("compile", "fwd"),
                                                     ("compile", "bwd")}
    for r in rows:
        if r["impl"] == "compile":
            assert r["median_ms"] is None and "inductor exploded" in r["error"]
        else:
            assert r["median_ms"] > 0 and r["speedup_vs"] == {}


def test_compute_targets_from_rows():
    def row(op, impl, ps, ms, regime="user", numel=2 ** 20, copy_fraction=None):
        return {"op": op, "impl": impl, "pass": ps, "median_ms": ms, "regime": regime, "numel": numel,
                "dtype": "float32", "device": "cpu", "copy_fraction": copy_fraction}
    rows = [row("mish", "fastact", "fwd", 1.0), row("mish", "native", "fwd", 6.0),
            row("mish", "fastact", "fwd+bwd", 2.0), row("mish", "native", "fwd+bwd", 8.0),
            row("swish", "fastact", "fwd", 1.2), row("swish", "native", "fwd", 1.0),
            row("swish", "fastact", "fwd", 0.5, regime="kernel", numel=2 ** 24, copy_fraction=0.9),
            row("swish", "fastact", "bwd", 0.5, regime="kernel", numel=2 ** 24, copy_fraction=0.7)]
    kb.add_speedups(rows)
    targets = {t["target"]: t for t in kb.compute_targets({"rows": rows})}
    mish = targets["mish: speedup vs native at 2^20"]
    assert mish["value"] == pytest.approx(4.0) and not mish["ok"] and mish["where"] == "fwd+bwd 2^20"
    swish = targets["swish: fastact/native time"]
    assert swish["value"] == pytest.approx(1.2) and not swish["ok"]
    copy = targets["swish: kernel fraction of copy bandwidth"]
    assert copy["value"] == pytest.approx(0.7) and copy["where"] == "bwd 2^24" and not copy["ok"]


def test_sizes_and_shapes():
    assert kb.parse_size("20") == 2 ** 20
    assert kb.parse_size("2^24") == 2 ** 24
    assert kb.parse_size("2**10") == 1024
    assert kb.parse_size("5000") == 5000
    for numel in (2 ** 12, 2 ** 20, 2 ** 24, 2 ** 28, 64 * 3 * 7):
        shape = kb.make_shape(numel, 64)
        assert len(shape) == 4 and shape[1] == 64 and math.prod(shape) == numel
    assert kb.make_shape(1000, 64) == (1000,)
