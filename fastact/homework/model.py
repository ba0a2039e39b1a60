"""The homework's network (question 3) with a pluggable activation, fastact's or PyTorch's.

    Conv2d(1 -> 8, 7x7, 'valid') -> act -> Conv2d(8 -> 8, 5x5, 'valid') -> act -> Flatten -> Linear(2592 -> 10)

400 + 1,608 + 25,930 = 27,938 weights, initialised as Keras does by default: glorot-uniform kernels and zero
biases. The softmax is folded into the loss (cross-entropy on logits). A learned activation (PReLU's alpha,
Swish's beta) adds 8 parameters per activation layer, as Keras' PReLU(shared_axes=[1, 2]) does.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATION_KINDS", "IMPLS", "EagerSwish", "make_activation", "HomeworkNet", "LinearClassifier",
    "keras_init_", "count_parameters", "learned_activation_params", "HOMEWORK_PARAMETERS",
]

HOMEWORK_PARAMETERS = 27_938
CHANNELS = 8
ACTIVATION_KINDS = ("leaky", "prelu", "swish", "swish_learn", "mish", "relu")
IMPLS = ("fastact", "native")


class EagerSwish(nn.Module):
    """x * sigmoid(beta x) written in plain torch ops, with a learnable beta per channel (dim 1): the
    PyTorch-native counterpart of fastact.nn.Swish(learnable=True), which torch.nn lacks."""

    def __init__(self, num_parameters: int = 1, init: float = 1.0) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.full((num_parameters,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        beta = self.beta.reshape([1, -1] + [1] * (x.dim() - 2)) if self.beta.numel() > 1 else self.beta
        return x * torch.sigmoid(beta * x)

    def extra_repr(self) -> str:
        return f"num_parameters={self.beta.numel()}"


def make_activation(kind: str, impl: str = "fastact", alpha: float | None = None, channels: int = CHANNELS,
                    prelu_init: float = 0.0, swish_beta: float = 1.0) -> nn.Module:
    """One activation module.

    kind: 'leaky' (slope `alpha`, any real), 'prelu' (a learned slope per channel, initialised to
    `prelu_init`: 0 is Keras' default), 'swish' (fixed beta), 'swish_learn' (a learned beta per channel,
    initialised to `swish_beta`), 'mish', 'relu'.
    impl: 'fastact' (fastact.nn) or 'native' (torch.nn, or EagerSwish for the learnable Swish).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if kind not in ACTIVATION_KINDS:
        raise ValueError(f"kind must be one of {ACTIVATION_KINDS}, got {kind!r}")
    if kind == "leaky" and alpha is None:
        raise ValueError("kind 'leaky' needs alpha")
    if impl == "native":
        if kind == "leaky":
            return nn.LeakyReLU(float(alpha))
        if kind == "prelu":
            return nn.PReLU(num_parameters=channels, init=prelu_init)
        if kind == "swish":
            return nn.SiLU() if swish_beta == 1.0 else EagerSwish(1, swish_beta).requires_grad_(False)
        if kind == "swish_learn":
            return EagerSwish(channels, swish_beta)
        if kind == "mish":
            return nn.Mish()
        return nn.ReLU()
    import fastact

    if kind == "leaky":
        return fastact.nn.LeakyReLU(float(alpha))
    if kind == "prelu":
        return fastact.nn.PReLU(num_parameters=channels, init=prelu_init)
    if kind == "swish":
        return fastact.nn.Swish(beta=swish_beta)
    if kind == "swish_learn":
        return fastact.nn.Swish(beta=swish_beta, learnable=True, num_parameters=channels)
    if kind == "mish":
        return fastact.nn.Mish()
    return fastact.nn.LeakyReLU(0.0)  # fastact's ReLU is the leaky family at alpha = 0


def keras_init_(module: nn.Module) -> nn.Module:
    """Keras' defaults: glorot-uniform kernels (fan_in = k*k*in, fan_out = k*k*out), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class HomeworkNet(nn.Module):
    """The homework's Keras model in PyTorch (NCHW). `act1` and `act2` are the two activation modules."""

    def __init__(self, act1: nn.Module, act2: nn.Module, channels: int = CHANNELS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 7)   # 28x28 -> 22x22x8: 400 parameters
        self.act1 = act1
        self.conv2 = nn.Conv2d(channels, channels, 5)  # -> 18x18x8: 1,608 parameters
        self.act2 = act2
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels * 18 * 18, 10)  # 2,592 -> 10: 25,930 parameters
        keras_init_(self)

    @classmethod
    def build(cls, kind: str, impl: str = "fastact", alpha: float | None = None, **kwargs) -> "HomeworkNet":
        return cls(make_activation(kind, impl, alpha, **kwargs), make_activation(kind, impl, alpha, **kwargs))

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.fc(self.flatten(x))


class LinearClassifier(nn.Module):
    """Multinomial logistic regression on the 784 pixels (Flatten -> Dense 10), Keras-initialised: the
    purely linear baseline for the inverted-digits task."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(28 * 28, 10)
        keras_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(x))


def count_parameters(model: nn.Module, include_activations: bool = False) -> int:
    """Trainable parameters; by default only those of the conv and dense layers (the homework's 27,938)."""
    total = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not include_activations and name.split(".")[0] in ("act1", "act2"):
            continue
        total += p.numel()
    return total


def learned_activation_params(model: nn.Module) -> dict[str, list[float]]:
    """The learned parameters of the activation layers: {'act1': [...8 values], 'act2': [...]} (PReLU's alpha
    or Swish's beta per filter); empty for fixed activations."""
    out = {}
    for layer in ("act1", "act2"):
        act = getattr(model, layer, None)
        if act is None:
            continue
        params = [p for p in act.parameters() if p.requires_grad]
        if params:
            out[layer] = [round(float(v), 6) for v in params[0].detach().flatten()]
    return out
