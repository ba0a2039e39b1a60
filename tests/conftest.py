import atexit
import os
import shutil
import tempfile

# torch.compile keeps compiled code on disk (inductor's FX graph cache), keyed without fastact's build: a later
# session would be served code compiled against an earlier build of the ops and could pass where a fresh
# machine fails. Each test session compiles afresh, as CI does.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastact-tests-inductor-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

# Keep hypothesis fast and reproducible in CI.
try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
    settings.register_profile("dev", max_examples=40, deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover
    pass


def cuda_available() -> bool:
    import fastact

    return torch.cuda.is_available() and fastact.has_cuda_kernels()


DEVICES = ["cpu"] + (["cuda"] if cuda_available() else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    reason = "fastact was built without CUDA kernels" if torch.cuda.is_available() else "no CUDA GPU on this machine"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
