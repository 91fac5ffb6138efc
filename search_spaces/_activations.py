"""Activation functions and their weight initializations, both keyed by activation name."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = dict(
    relu=nn.ReLU,
    gelu=nn.GELU,
    silu=nn.SiLU,
    tanh=nn.Tanh,
    sigmoid=nn.Sigmoid,
    identity=nn.Identity,
)

WeightInit = Callable[[torch.Tensor, "torch.Generator | None"], None]
"""Initializes a conv or linear weight in place, drawing from the generator (global RNG if None)."""


def _he_normal(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    # He et al. 2015: Var(w) = 2 / fan_in keeps the forward signal variance constant through layers
    # whose activation zeroes about half of its inputs (ReLU: chi_1 = 1, the critical point).
    # GELU and SiLU equal ReLU away from zero, so they take the same scale.
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu", generator=generator)


def _xavier_normal(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    # Glorot & Bengio 2010: Var(w) = 2 / (fan_in + fan_out) for units that are linear near zero
    # (identity; sigmoid by the same convention). Sigmoid's slope 1/4 still shrinks signals with
    # depth (chi_1 ~ 0.06): that is one of the paper's claims the service measures, so it is
    # deliberately not corrected here.
    nn.init.xavier_normal_(weight, gain=1.0, generator=generator)


def _xavier_normal_tanh(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    # Gain 5/3 (torch.nn.init.calculate_gain("tanh")) offsets tanh's contraction so activations
    # neither vanish nor saturate in deep stacks. A "critical" tanh (sigma_w^2 ~ 1.76, Poole et al.
    # 2016) would be another entry in INITIALIZERS next to an ACTIVATIONS entry of the same name.
    nn.init.xavier_normal_(weight, gain=5.0 / 3.0, generator=generator)


INITIALIZERS: dict[str, WeightInit] = dict(
    relu=_he_normal,
    gelu=_he_normal,
    silu=_he_normal,
    tanh=_xavier_normal_tanh,
    sigmoid=_xavier_normal,
    identity=_xavier_normal,
)


def check_activation(name: object, where: str) -> str:
    """Check that ``name`` is a key of ACTIVATIONS with an entry in INITIALIZERS.

    Args:
        name: The activation name to check.
        where: What holds the value, for the message (e.g. ``"space.activations"``).

    Returns:
        ``name`` unchanged.

    Raises:
        ValueError: If the name is unknown, listing the known names.
    """
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"{where} has unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}"
        )
    if name not in INITIALIZERS:
        raise ValueError(
            f"{where}: activation {name!r} has no weight initialization; add it to INITIALIZERS"
        )
    return name


def make_activation(name: str) -> nn.Module:
    """Instantiate the activation module registered under ``name``.

    Raises:
        ValueError: If the name is unknown, listing the known names.
    """
    return ACTIVATIONS[check_activation(name, "activation")]()


def initialize(model: nn.Module, activation: str, generator: torch.Generator | None) -> None:
    """Initialize every parameter and buffer of a freshly built model in place.

    Conv and linear weights follow INITIALIZERS[activation], their biases are zero; batch norm is
    reset to weight 1, bias 0 and fresh running statistics. Models are built on the meta device and
    materialized uninitialized, so any other module that owns parameters is an error.

    Raises:
        ValueError: If the activation is unknown.
        TypeError: If the model holds a parameterized module this function does not know.
    """
    weight_init = INITIALIZERS[check_activation(activation, "activation")]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            weight_init(module.weight, generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.reset_parameters()
        elif any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        ):
            raise TypeError(f"cannot initialize module {name!r} of type {type(module).__name__}")
