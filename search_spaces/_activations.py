"""Activation functions and their weight initializations, both keyed by activation name."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

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
    # neither vanish nor saturate in deep stacks. The "critical" tanh of Poole et al. 2016 is the
    # variant "tanh_critical" below, so that existing architectures keep their weights.
    nn.init.xavier_normal_(weight, gain=5.0 / 3.0, generator=generator)


CRITICAL_TANH_WEIGHT_VARIANCE = 1.76
"""σ_w² of the critical tanh: Var(w) = σ_w² / fan_in (Poole et al. 2016, arXiv 1606.05340)."""
CRITICAL_TANH_BIAS_VARIANCE = 0.05
"""σ_b² of the critical tanh: at σ_b² = 0.05 the order-to-chaos line χ1 = 1 crosses σ_w² ≈ 1.76."""


def _critical_tanh(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    # Mean-field theory (Poole et al. 2016; Schoenholz et al. ICLR 2017): with Var(w) = σ_w²/fan_in
    # and Var(b) = σ_b², tanh networks sit at the edge of chaos (χ1 = σ_w² E[tanh'(√q* z)²] = 1)
    # where σ_w² ≈ 1.76 for σ_b² = 0.05; correlations and gradients then neither vanish nor explode
    # over depth. For convolutions fan_in = C_in·prod(kernel) (Xiao et al. 2018 use the same scale).
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    std = math.sqrt(CRITICAL_TANH_WEIGHT_VARIANCE / fan_in)
    nn.init.normal_(weight, 0.0, std, generator=generator)


INITIALIZERS: dict[str, WeightInit] = dict(
    relu=_he_normal,
    gelu=_he_normal,
    silu=_he_normal,
    tanh=_xavier_normal_tanh,
    sigmoid=_xavier_normal,
    identity=_xavier_normal,
)


@dataclass(frozen=True)
class ActivationVariant:
    """An activation function of ACTIVATIONS under another initialization, with its own name.

    Variants are valid wherever an activation name is (architectures, ``space.activations``), but
    the spaces' default choices stay the keys of ACTIVATIONS: a variant is drawn only where a config
    lists it, so existing searches and architecture ids are unchanged.

    Attributes:
        activation: The key of ACTIVATIONS whose module the variant uses.
        weight_init: Initialization of conv and linear weights.
        bias_std: Standard deviation of the normal initial biases (0: zero biases).
    """

    activation: str
    weight_init: WeightInit
    bias_std: float = 0.0


ACTIVATION_VARIANTS: dict[str, ActivationVariant] = dict(
    tanh_critical=ActivationVariant(
        "tanh", _critical_tanh, bias_std=math.sqrt(CRITICAL_TANH_BIAS_VARIANCE)
    ),
)


def check_activation(name: object, where: str) -> str:
    """Check that ``name`` is a key of ACTIVATIONS with an entry in INITIALIZERS, or a variant.

    Args:
        name: The activation name to check.
        where: What holds the value, for the message (e.g. ``"space.activations"``).

    Returns:
        ``name`` unchanged.

    Raises:
        ValueError: If the name is unknown, listing the known names (and the closest variant).
    """
    if isinstance(name, str) and name in ACTIVATION_VARIANTS:
        return name
    if not isinstance(name, str) or name not in ACTIVATIONS:
        close = difflib.get_close_matches(str(name), list(ACTIVATION_VARIANTS), n=1)
        hint = f" (or the variant {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{where} has unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}{hint}"
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
    name = check_activation(name, "activation")
    if name in ACTIVATION_VARIANTS:
        name = ACTIVATION_VARIANTS[name].activation
    return ACTIVATIONS[name]()


def initialize(model: nn.Module, activation: str, generator: torch.Generator | None) -> None:
    """Initialize every parameter and buffer of a freshly built model in place.

    Conv and linear weights follow INITIALIZERS[activation], their biases are zero; batch norm is
    reset to weight 1, bias 0 and fresh running statistics. A variant (ACTIVATION_VARIANTS) uses
    its own weight initialization and draws its biases from N(0, bias_std²) right after each
    weight. Models are built on the meta device and materialized uninitialized, so any other
    module that owns parameters is an error.

    Raises:
        ValueError: If the activation is unknown.
        TypeError: If the model holds a parameterized module this function does not know.
    """
    activation = check_activation(activation, "activation")
    bias_std = 0.0
    if activation in ACTIVATION_VARIANTS:
        variant = ACTIVATION_VARIANTS[activation]
        weight_init, bias_std = variant.weight_init, variant.bias_std
    else:
        weight_init = INITIALIZERS[activation]
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
            weight_init(module.weight, generator)
            if module.bias is not None and bias_std > 0:
                nn.init.normal_(module.bias, 0.0, bias_std, generator=generator)
            elif module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.reset_parameters()
        elif any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        ):
            raise TypeError(f"cannot initialize module {name!r} of type {type(module).__name__}")
