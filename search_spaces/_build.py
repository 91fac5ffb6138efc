"""An architecture's two products: its analytic curve (layer_costs) and its model (build_model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _validation as check
from ._base import Architecture
from ._costs import LayerCost
from ._plan import SegmentedNet, Shape


def _check_inputs(arch: Architecture, input_shape: Sequence[int], num_classes: int) -> Shape:
    if not isinstance(arch, Architecture):
        raise TypeError(f"expected an Architecture, but got {type(arch).__name__}")
    if not (
        isinstance(input_shape, Sequence)
        and len(input_shape) in (2, 3)
        and all(check.is_int(size) and size >= 1 for size in input_shape)
    ):
        raise ValueError(
            "input_shape must be (C, L) or (C, H, W) of positive integers, "
            f"but got {check.show(input_shape)}"
        )
    check.int_at_least("num_classes", num_classes, 1)
    return tuple(input_shape)


def layer_costs(
    arch: Architecture, input_shape: Sequence[int], num_classes: int
) -> list[LayerCost]:
    """Compute the network's curve analytically, without building it or running a forward pass.

    Args:
        arch: The architecture.
        input_shape: Per-sample input shape: ``(C, L)`` for 1-D nets, ``(C, H, W)`` for 2-D nets.
        num_classes: Outputs of the final linear layer.

    Returns:
        One LayerCost per conv, linear, batch-norm and pooling module of
        ``build_model(arch, input_shape, num_classes)``, in ``named_modules()`` order and named
        as there.
        MACs per sample: conv C_out·(C_in/groups)·prod(kernel)·prod(output spatial size) (the seed
        paper's N_k·Kx·Ky·Kz·Sx·Sy·Sz, section III-A), linear in·out, norm and pool 0; equal to
        ``torch.utils.flop_counter.FlopCounterMode`` counts / 2 on conv and linear layers.

    Raises:
        InfeasibleArchitecture: If a layer would have spatial size < 1 or a kernel larger than
            its padded input; the message starts with "infeasible: " and names the layer.
        ValueError: If ``input_shape`` or ``num_classes`` is invalid.
        TypeError: If ``arch`` is not an Architecture.
    """
    shape = _check_inputs(arch, input_shape, num_classes)
    return arch._plan(num_classes).costs(shape)


def build_model(
    arch: Architecture,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    generator: torch.Generator | None = None,
) -> SegmentedNet:
    """Build the initialized PyTorch model of an architecture (on CPU, in training mode).

    Weights are initialized by the table ``INITIALIZERS[arch.activation]``, biases are zero, batch
    norms fresh. Nothing else is touched: with ``generator`` the global RNG is not consumed.

    Args:
        arch: The architecture.
        input_shape: Per-sample input shape: ``(C, L)`` builds Conv1d nets, ``(C, H, W)``
            Conv2d nets.
        num_classes: Outputs of the final linear layer.
        generator: Source of the initial weights; the global torch RNG if None.

    Returns:
        A SegmentedNet: ``segments`` (stem / conv layer groups / residual blocks) and ``head``;
        input ``(B, *input_shape)``, output ``(B, num_classes)``.

    Raises:
        InfeasibleArchitecture: If the architecture cannot be built for ``input_shape``.
        ValueError: If ``input_shape`` or ``num_classes`` is invalid.
        TypeError: If ``arch`` is not an Architecture.
    """
    shape = _check_inputs(arch, input_shape, num_classes)
    return arch._plan(num_classes).build(shape, generator)
