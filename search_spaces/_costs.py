"""Per-layer cost records (the segments of the network's curve) and the infeasibility error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LAYER_KINDS: tuple[str, ...] = ("conv", "linear", "norm", "pool")


class InfeasibleArchitecture(ValueError):
    """An architecture that cannot be built for the given input shape.

    The message starts with ``"infeasible: "`` and names the layer and the reason, e.g.
    ``infeasible: layer segments.3.3 would have spatial size 0x0 (input 8x8 after 4
    downsamplings)``. It subclasses ValueError because it is a property of user-chosen values
    (architecture and input), so callers that treat bad configurations uniformly catch it
    without a special case.
    """


@dataclass(frozen=True)
class LayerCost:
    """The analytic cost of one layer: one segment of the network's curve.

    Attributes:
        name: Qualified module name of the layer in ``build_model``'s module (``named_modules()``).
        kind: One of ``"conv"``, ``"linear"``, ``"norm"``, ``"pool"``.
        output_shape: Per-sample output shape ``(channels, *spatial)`` or ``(features,)``;
            the batch dimension is excluded.
        macs: Multiply-accumulates of one forward pass on one sample (0 for norm and pool).
        params: Exact number of trainable parameters of the module.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    macs: int
    params: int


def total_macs(costs: Iterable[LayerCost]) -> int:
    """Sum the MACs of a list of layer costs: the length of the network's curve, E_comp.

    Args:
        costs: Layer costs as returned by ``layer_costs``.

    Returns:
        Total multiply-accumulates of one forward pass on one sample.
    """
    return sum(cost.macs for cost in costs)


def total_params(costs: Iterable[LayerCost]) -> int:
    """Sum the parameter counts of a list of layer costs.

    Args:
        costs: Layer costs as returned by ``layer_costs``.

    Returns:
        Total trainable parameters; equals ``sum(p.numel() for p in model.parameters())`` of
        ``build_model`` with the same arguments.
    """
    return sum(cost.params for cost in costs)
