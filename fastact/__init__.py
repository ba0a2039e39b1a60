"""fastact: fused C++/CUDA Swish, Mish, leaky-ReLU and PReLU kernels for PyTorch.

    import fastact
    y = fastact.mish(x)                  # functions named like torch.nn.functional
    act = fastact.nn.PReLU(16)           # drop-in modules
    model = fastact.nn.convert(model)    # swap torch activations in an existing model
"""
import torch  # noqa: F401  (loads libtorch, which the extension links against)

try:
    from . import _C  # noqa: F401  (loads the compiled library; registers torch.ops.fastact)
except ImportError as exc:  # no silent fallback: the package is the compiled kernels
    # A missing library makes Python speak of a "partially initialized module (most likely due to a circular
    # import)", which it is not: say that it is not built. A library that fails to load keeps its own message.
    missing = getattr(exc, "name", None) in ("fastact._C", "fastact") and "_C" in str(exc)
    raise ImportError(
        "fastact's compiled extension (fastact._C) "
        + ("is not built" if missing else f"could not be loaded: {exc}") + ".\n"
        "Build it from the source checkout with:\n"
        "    pip install --no-build-isolation -e .     (or `pip install .` for a copy in site-packages)\n"
        "(torch must be installed first; set FASTACT_BUILD=cpu to skip the CUDA kernels)."
    ) from exc

from . import ops  # noqa: E402,F401  (registers fake kernels and autograd)
from . import nn  # noqa: E402,F401
from . import reference  # noqa: E402,F401
from .compiled import compile_fusion, set_compile_fusion  # noqa: E402
from .functional import leaky_relu, mish, prelu, silu, swish  # noqa: E402
from .ops import (  # noqa: E402
    cpu_capability, cpu_huge_pages, has_cuda_kernels, leaky_relu_saves_mask, set_cpu_capability, set_cpu_huge_pages,
    set_leaky_relu_saves_mask, supported_cpu_capabilities,
)

__version__ = "0.1.0"
__all__ = [
    "swish", "silu", "mish", "leaky_relu", "prelu", "nn", "reference",
    "cpu_capability", "set_cpu_capability", "supported_cpu_capabilities", "cpu_huge_pages", "set_cpu_huge_pages",
    "has_cuda_kernels", "compile_fusion", "set_compile_fusion", "leaky_relu_saves_mask", "set_leaky_relu_saves_mask",
]
