"""Layer plans: one declarative description of a network, walked to cost it and to build it.

``layer_costs`` and ``build_model`` run the same walk over the same plan, so LayerCost names and
output shapes match the built modules by construction; the tests still check both against a real
forward pass and torch's FlopCounterMode.

MACs follow the seed paper's complexity factor (section III-A): a layer of N_k kernels of size
Kx·Ky·Kz producing an output of spatial size Sx·Sy costs N_k·Kx·Ky·Kz·Sx·Sy multiply-accumulates,
where Kz = C_in/groups is the kernel's depth; i.e. C_out·(C_in/groups)·prod(kernel)·prod(output
spatial size). A linear layer costs in·out. Bias additions, norms, activations and pooling are not
counted, which is exactly what ``torch.utils.flop_counter.FlopCounterMode`` counts (it reports
2·MACs: one multiply and one add each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ._activations import initialize, make_activation
from ._costs import InfeasibleArchitecture, LayerCost

Shape = tuple[int, ...]
"""Per-sample shape (channels, *spatial) or (features,): the batch dimension is excluded."""


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """PyTorch's output length of a convolution or pooling window (dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def _show(sizes: Shape) -> str:
    return "x".join(str(size) for size in sizes)


def _child(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass
class Walk:
    """State of one walk over a plan: the costs so far, and modules when ``build`` is set."""

    input_shape: Shape
    build: bool
    costs: list[LayerCost] = field(default_factory=list)
    downsamplings: int = 0

    def infeasible(self, name: str, reason: str) -> InfeasibleArchitecture:
        count = self.downsamplings
        plural = "" if count == 1 else "s"
        return InfeasibleArchitecture(
            f"infeasible: layer {name} {reason} "
            f"(input {_show(self.input_shape[1:])} after {count} downsampling{plural})"
        )


class Layer(Protocol):
    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        """Record this layer's costs under ``name``; return its output shape and module (None
        unless ``walk.build``)."""
        ...


def _spatial_module(
    classes: tuple[type[nn.Module], type[nn.Module]], shape: Shape
) -> type[nn.Module]:
    # (C, L) -> the 1-D class, (C, H, W) -> the 2-D class.
    return classes[len(shape) - 2]


@dataclass(frozen=True)
class Conv:
    """Convolution with padding kernel_size // 2: size-preserving at stride 1 for odd kernels."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    bias: bool = False

    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        in_channels, *spatial = shape
        padding = self.kernel_size // 2
        if self.stride > 1:
            walk.downsamplings += 1
        # Unreachable while padding is k // 2 (n + 2p >= k for n >= 1); kept so the plan stays
        # correct if padding ever becomes a choice.
        for size in spatial:
            if size + 2 * padding < self.kernel_size:
                raise walk.infeasible(
                    name,
                    f"has kernel size {self.kernel_size} larger than its padded input "
                    f"{size}+2*{padding}",
                )
        out_spatial = tuple(output_size(s, self.kernel_size, self.stride, padding) for s in spatial)
        if min(out_spatial) < 1:
            raise walk.infeasible(name, f"would have spatial size {_show(out_spatial)}")
        out_shape = (self.out_channels, *out_spatial)
        kernel_volume = self.kernel_size ** len(spatial)
        weights = self.out_channels * in_channels * kernel_volume  # groups == 1
        walk.costs.append(
            LayerCost(
                name=name,
                kind="conv",
                output_shape=out_shape,
                macs=weights * math.prod(out_spatial),
                params=weights + (self.out_channels if self.bias else 0),
            )
        )
        module = None
        if walk.build:
            conv = _spatial_module((nn.Conv1d, nn.Conv2d), shape)
            module = conv(
                in_channels,
                self.out_channels,
                self.kernel_size,
                stride=self.stride,
                padding=padding,
                bias=self.bias,
            )
        return out_shape, module


@dataclass(frozen=True)
class BatchNorm:
    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        walk.costs.append(LayerCost(name, "norm", shape, macs=0, params=2 * shape[0]))
        module = None
        if walk.build:
            module = _spatial_module((nn.BatchNorm1d, nn.BatchNorm2d), shape)(shape[0])
        return shape, module


@dataclass(frozen=True)
class Activation:
    name: str

    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        # Activations are not segments of the curve: no LayerCost.
        return shape, make_activation(self.name) if walk.build else None


@dataclass(frozen=True)
class MaxPool:
    """Max pooling with window 2 and stride 2: halves every spatial size (floor)."""

    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        walk.downsamplings += 1
        out_spatial = tuple(output_size(s, 2, 2, 0) for s in shape[1:])
        if min(out_spatial) < 1:
            raise walk.infeasible(name, f"would have spatial size {_show(out_spatial)}")
        out_shape = (shape[0], *out_spatial)
        walk.costs.append(LayerCost(name, "pool", out_shape, macs=0, params=0))
        module = None
        if walk.build:
            module = _spatial_module((nn.MaxPool1d, nn.MaxPool2d), shape)(kernel_size=2)
        return out_shape, module


@dataclass(frozen=True)
class GlobalAvgPool:
    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        out_shape = (shape[0],) + (1,) * (len(shape) - 1)
        walk.costs.append(LayerCost(name, "pool", out_shape, macs=0, params=0))
        module = None
        if walk.build:
            pool = _spatial_module((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d), shape)
            module = pool(1)
        return out_shape, module


@dataclass(frozen=True)
class Flatten:
    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        return (math.prod(shape),), nn.Flatten() if walk.build else None


@dataclass(frozen=True)
class Linear:
    out_features: int

    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        (in_features,) = shape
        weights = in_features * self.out_features
        out_shape = (self.out_features,)
        walk.costs.append(
            LayerCost(name, "linear", out_shape, macs=weights, params=weights + self.out_features)
        )
        return out_shape, nn.Linear(in_features, self.out_features) if walk.build else None


@dataclass(frozen=True)
class Sequential:
    layers: tuple[Layer, ...]

    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        modules = []
        for index, layer in enumerate(self.layers):
            shape, module = layer.walk(_child(name, str(index)), shape, walk)
            modules.append(module)
        return shape, nn.Sequential(*modules) if walk.build else None


class ResidualBlock(nn.Module):
    """``activation(residual(x) + shortcut(x))``: a near-identity segment I + F_k of the curve.

    Attributes:
        residual: The F_k branch (diagnostics compute ||F_k(x)|| / ||x|| from it).
        shortcut: ``nn.Identity`` or a projection (1x1 conv + batch norm) where the shape changes.
        activation: Applied after the addition (post-activation form), or ``nn.Identity``
            (pre-activation form).
    """

    def __init__(self, residual: nn.Module, shortcut: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.residual(x) + self.shortcut(x))


@dataclass(frozen=True)
class Residual:
    residual: Sequential
    shortcut: Sequential | None  # None: identity
    activation: str

    def walk(self, name: str, shape: Shape, walk: Walk) -> tuple[Shape, nn.Module | None]:
        residual_shape, residual = self.residual.walk(_child(name, "residual"), shape, walk)
        shortcut_shape, shortcut = shape, nn.Identity() if walk.build else None
        if self.shortcut is not None:
            # The projection downsamples in parallel with the residual branch, not after it.
            downsamplings = walk.downsamplings
            shortcut_shape, shortcut = self.shortcut.walk(_child(name, "shortcut"), shape, walk)
            walk.downsamplings = downsamplings
        if residual_shape != shortcut_shape:
            # Plans are generated from validated architectures (odd kernels), so this is a bug.
            raise RuntimeError(
                f"layer {name}: residual shape {residual_shape} != shortcut shape {shortcut_shape}"
            )
        _, activation = Activation(self.activation).walk(_child(name, "activation"), shape, walk)
        if not walk.build:
            return residual_shape, None
        return residual_shape, ResidualBlock(residual, shortcut, activation)


class SegmentedNet(nn.Module):
    """A network as a curve of segments: ``forward(x) = head(segments[-1](...segments[0](x)))``.

    Attributes:
        segments: The stem / each conv layer group / each residual block, in order.
        head: Pooling or flattening followed by the final linear layer.
    """

    def __init__(self, segments: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = segment(x)
        return self.head(x)


@dataclass(frozen=True)
class NetworkPlan:
    """A whole network: segments, head and the activation whose initialization it uses."""

    segments: tuple[Layer, ...]
    head: Sequential
    activation: str

    def costs(self, input_shape: Shape) -> list[LayerCost]:
        walk = Walk(input_shape, build=False)
        self._walk(input_shape, walk)
        return walk.costs

    def build(self, input_shape: Shape, generator: torch.Generator | None) -> SegmentedNet:
        walk = Walk(input_shape, build=True)
        # Build on the meta device, then materialize once: no memory or RNG spent on PyTorch's
        # default initialization, which initialize() replaces anyway; the global RNG is untouched
        # when a generator is given.
        with torch.device("meta"):
            model = self._walk(input_shape, walk)
        model = model.to_empty(device="cpu")
        initialize(model, self.activation, generator)
        return model

    def _walk(self, shape: Shape, walk: Walk) -> SegmentedNet | None:
        segments = []
        for index, segment in enumerate(self.segments):
            shape, module = segment.walk(f"segments.{index}", shape, walk)
            segments.append(module)
        _, head = self.head.walk("head", shape, walk)
        return SegmentedNet(segments, head) if walk.build else None
