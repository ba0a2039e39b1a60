"""Drop-in modules: Swish (fixed or learnable beta), SiLU, Mish, LeakyReLU, PReLU, and convert() to swap
torch's activation modules in an existing model for these.

State-dict keys match torch's modules (PReLU's parameter is `weight`), so checkpoints load either way.
"""
from __future__ import annotations

import numbers
import warnings

import torch
import torch._dynamo.eval_frame
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import functional as F

__all__ = ["Swish", "SiLU", "Mish", "LeakyReLU", "PReLU", "convert", "ACTIVATIONS"]


def _count(module: str, num_parameters) -> int:
    """num_parameters as an int >= 1 (torch.nn.PReLU would take 0 and fail at the first call, and report a
    negative or fractional count as a tensor-size error)."""
    if isinstance(num_parameters, bool) or not isinstance(num_parameters, numbers.Integral):
        raise TypeError(f"fastact.nn.{module}: num_parameters must be an int, got {type(num_parameters).__name__}")
    if num_parameters < 1:
        raise ValueError(f"fastact.nn.{module}: num_parameters must be >= 1, got {num_parameters}")
    return int(num_parameters)


class Swish(nn.Module):
    """x * sigmoid(beta x). With learnable=True, beta is a parameter of num_parameters elements
    (1, or one per channel = dim 1 of the input), initialised to `beta` ("Swish-beta")."""

    def __init__(self, beta: float = 1.0, learnable: bool = False, num_parameters: int = 1,
                 device=None, dtype=None) -> None:
        super().__init__()
        num_parameters = _count("Swish", num_parameters)
        beta = F._check_number("nn.Swish", "beta", beta)
        if not learnable and num_parameters != 1:
            raise ValueError("fastact.nn.Swish: num_parameters > 1 needs learnable=True")
        self.learnable = learnable
        self.num_parameters = num_parameters
        self.init = float(beta)
        if learnable:
            self.beta = nn.Parameter(torch.empty(num_parameters, device=device, dtype=dtype))
            self.reset_parameters()
        else:
            self.beta = self.init

    def reset_parameters(self) -> None:
        """A learnable beta back to its initial value (deferred initialisation calls this after to_empty())."""
        if self.learnable:
            if self.init is None:
                raise RuntimeError("fastact.nn.Swish.reset_parameters: this module was pickled by an older fastact, "
                                   "which did not keep the initial beta; set module.init = <beta> first")
            nn.init.constant_(self.beta, self.init)

    def __setstate__(self, state):
        state.setdefault("init", None)  # (pickled before the initial beta was kept)
        super().__setstate__(state)

    def forward(self, input: Tensor) -> Tensor:
        return F.swish(input, self.beta)

    def extra_repr(self) -> str:
        if self.learnable:
            initial = "" if self.init is None else f"beta={self.init}, "
            return f"{initial}learnable=True, num_parameters={self.num_parameters}"
        return f"beta={self.beta}"


class SiLU(nn.Module):
    """x * sigmoid(x), a drop-in for torch.nn.SiLU."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.silu(input, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Mish(nn.Module):
    """x * tanh(softplus(x)), a drop-in for torch.nn.Mish."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.mish(input, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(nn.Module):
    """x for x > 0, negative_slope * x otherwise, a drop-in for torch.nn.LeakyReLU; any real slope works
    (1: identity, 0: ReLU, -1: |x|)."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = F._check_number("nn.LeakyReLU", "negative_slope", negative_slope)
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.leaky_relu(input, self.negative_slope, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class PReLU(nn.Module):
    """Leaky ReLU with a learned slope `weight` of num_parameters elements (1, or one per channel), a
    drop-in for torch.nn.PReLU (same parameter name, shape and init)."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device=None, dtype=None) -> None:
        super().__init__()
        self.num_parameters = _count("PReLU", num_parameters)
        F._check_number("nn.PReLU", "init", init)
        self.init = init
        self.weight = nn.Parameter(torch.empty(self.num_parameters, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init)

    def forward(self, input: Tensor) -> Tensor:
        return F.prelu(input, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


# Name -> module class, for model code that picks an activation by name (as timm's create_act does).
ACTIVATIONS = {"swish": Swish, "silu": SiLU, "mish": Mish, "leaky_relu": LeakyReLU, "prelu": PReLU}


_CONVERTED = (nn.SiLU, nn.Mish, nn.LeakyReLU, nn.PReLU)


def _replacement(module: nn.Module, path: str, left: list[str]) -> nn.Module | None:
    # What binds calls to the torch module itself, which a swapped-in module would never see.
    parametrized = parametrize.is_parametrized(module)
    if (type(module).__bases__[0] if parametrized else type(module)) in _CONVERTED:
        why = ("it is parametrized (torch.nn.utils.parametrize)" if parametrized else
               "it is compiled on its own (Module.compile())" if getattr(module, "_compiled_call_impl", None) else
               "its forward was replaced on the instance, by a function that calls torch's module"
               if "forward" in vars(module) else None)
        if why:
            left.append(_left(path, module, why))
            return None
    # Exact types only: a subclass of a torch activation (a user's, or a library's such as timm's PReLU) may
    # change what it computes. It is left, and said so: silently left, it would keep torch's kernels unnoticed.
    if isinstance(module, _CONVERTED) and type(module) not in _CONVERTED and not parametrized:
        base = next(c for c in _CONVERTED if isinstance(module, c)).__name__
        left.append(f"fastact.nn.convert: left {path} ({type(module).__module__}.{type(module).__qualname__}) as it "
                    f"is: a subclass of torch.nn.{base} may compute something else; where its forward is torch's, "
                    f"replace it with fastact.nn.{base} by hand")
        return None
    if type(module) is nn.SiLU:
        new = SiLU(inplace=module.inplace)
    elif type(module) is nn.Mish:
        new = Mish(inplace=module.inplace)
    elif type(module) is nn.LeakyReLU:
        new = LeakyReLU(module.negative_slope, inplace=module.inplace)
    elif type(module) is nn.PReLU:
        new = PReLU(module.num_parameters, device="meta")  # (its weight is the torch module's, below)
    else:
        return None
    # The torch module's whole state, under the names fastact's forward reads too: its parameters (the same
    # Parameter objects, so optimisers and tied weights keep working), buffers, submodules (a quantization
    # observer), hooks (the same dicts, so the handles a user holds still remove them), training flag, and what
    # a utility or the user set (pruning's weight_orig and weight_mask, whose hook recomputes weight).
    negative_slope = getattr(new, "negative_slope", None)
    new.__dict__.update(vars(module))
    if negative_slope is not None:
        new.negative_slope = negative_slope  # checked, a float (TorchScript needs one)
    return new


def convert(model: nn.Module) -> nn.Module:
    """Replace torch.nn.SiLU, Mish, LeakyReLU and PReLU modules in `model` (recursively, in place) with
    fastact's, keeping each one's state (parameters, buffers, hooks, submodules, attributes); returns the model.
    A model that is itself one of those is replaced. A module used in several places is replaced by one fastact
    module everywhere (so a shared PReLU stays shared).

    An activation whose calls are bound to the torch module itself is left as it is, with a warning, since a
    swapped-in module would never run: one compiled on its own (`torch.compile(act)`, `act.compile()`), one
    whose `forward` was replaced on the instance (as hook libraries do), one with parametrizations
    (torch.nn.utils.parametrize). Convert before compiling, hooking or parametrizing."""
    left: list[str] = []
    model = _convert(model, {}, type(model).__name__, left)
    for message in left:
        warnings.warn(message, UserWarning, stacklevel=2)
    return model


def _convert(model: nn.Module, done: dict[int, nn.Module], path: str, left: list[str]) -> nn.Module:
    if id(model) in done:
        return done[id(model)]
    new = _replacement(model, path, left)
    done[id(model)] = model if new is None else new
    if new is not None:
        return new
    # _modules rather than named_children(), which skips every later attribute holding the same module
    for name, child in list(model._modules.items()):
        if child is None:
            continue
        converted = _convert(child, done, f"{path}.{name}", left)
        if converted is child:
            continue
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) and name == "_orig_mod":
            # torch.compile(act) bound act.__call__ when it wrapped it: a new _orig_mod would never run
            left.append(_left(f"{path}.{name}", child, "it is compiled on its own (torch.compile(module))"))
            done[id(child)] = child
            continue
        setattr(model, name, converted)
    return model


def _left(path: str, module: nn.Module, why: str) -> str:
    return (f"fastact.nn.convert: left {path} ({type(module).__name__}) as torch's module: {why}; convert the "
            "model before compiling, hooking or parametrizing it")
