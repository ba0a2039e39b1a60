"""The source distribution (what `python -m build` makes and `pip install fastact-<v>.tar.gz` builds) carries
every file the build and the tests need: setuptools adds only the Python packages and the extension's listed
.cpp files by itself, and a missing header fails only on the user's machine."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Files the sdist need not carry: build outputs and caches.
_SKIP_SUFFIXES = {".o", ".so", ".pyc", ".pyo"}


def _source_files(folder: str) -> set[str]:
    """The files under folder that git tracks (every file but build outputs where git is unavailable)."""
    try:
        out = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=60).stdout
        files = set(out.split())
    except (OSError, subprocess.SubprocessError):
        files = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()}
    return {f for f in files if Path(f).suffix not in _SKIP_SUFFIXES and "__pycache__" not in f}


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory) -> set[str]:
    # Build from a copy, so that the egg-info setuptools writes stays out of the checkout.
    tree = tmp_path_factory.mktemp("tree")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    for folder in ("csrc", "fastact", "tests"):
        shutil.copytree(ROOT / folder, tree / folder,
                        ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__", "build"))
    dist = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, FASTACT_BUILD="cpu")  # (sdist compiles nothing; this skips the CUDA probe)
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    archive, = dist.glob("fastact-*.tar.gz")
    with tarfile.open(archive) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("folder", ["csrc", "fastact", "tests"])
def test_sdist_carries_every_source_file(sdist_members, folder):
    missing = sorted(_source_files(folder) - sdist_members)
    assert not missing, f"the sdist lacks {len(missing)} files, e.g. {missing[:8]}: add them to MANIFEST.in"


def test_sdist_carries_the_build_files_and_no_build_outputs(sdist_members):
    assert {"setup.py", "pyproject.toml", "README.md"} <= sdist_members
    outputs = sorted(m for m in sdist_members if Path(m).suffix in _SKIP_SUFFIXES or "__pycache__" in m)
    assert not outputs, outputs


@pytest.mark.parametrize("library", ["missing", "broken"])
def test_import_without_the_compiled_extension_says_how_to_build_it(tmp_path, library):
    """No silent fallback: `import fastact` without a loadable fastact._C fails, saying that it is not built
    (not Python's "partially initialized module ... circular import") or why it does not load, and how to build."""
    shutil.copytree(ROOT / "fastact", tmp_path / "fastact", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    if library == "broken":
        (tmp_path / "fastact" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(b"not a library")
    # -S: no site module, so no .pth file (an editable install's finder) brings the real fastact back; the
    # environment's site-packages (torch) come through PYTHONPATH, after the copy
    paths = [str(tmp_path), *dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))]
    result = subprocess.run([sys.executable, "-S", "-c", "import fastact"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert result.returncode != 0
    last = result.stderr[result.stderr.index("ImportError: fastact's compiled extension"):]
    if library == "missing":
        assert "(fastact._C) is not built." in last and "circular" not in last
    else:
        assert "(fastact._C) could not be loaded:" in last
    assert "pip install --no-build-isolation -e ." in last
