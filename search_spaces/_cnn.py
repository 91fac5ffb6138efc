"""The ``cnn`` space: plain stacks of conv -> [batch norm] -> activation -> [max pool] layers."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import _validation as check
from ._activations import ACTIVATIONS, check_activation
from ._base import Architecture, FlatValue, SearchSpace, register_space
from ._plan import (
    Activation,
    BatchNorm,
    Conv,
    Flatten,
    GlobalAvgPool,
    Layer,
    Linear,
    MaxPool,
    NetworkPlan,
    Sequential,
)
from ._trial import Trial, suggest_choice

DOWNSAMPLES = ("stride", "pool", "none")
HEADS = ("global_pool", "flatten")
_HEAD_ABBREVIATIONS = {"global_pool": "gap", "flatten": "flatten"}
# At depth 0 these fields cannot affect the model; fixing them gives one arch_id per model.
# (With hidden layers in the head the activation is used, see CNNArchitecture._check_canonical.)
_UNUSED_AT_DEPTH_0: dict[str, Any] = dict(
    activation="identity", batch_norm=False, downsample="none", downsample_every=1, head="flatten"
)


@dataclasses.dataclass(frozen=True)
class CNNArchitecture(Architecture):
    """A plain CNN: ``depth = len(channels)`` conv layers, then a linear head.

    Layer i is conv(k_i, padding k_i//2, bias only without batch norm) -> [batch norm] ->
    activation -> [max pool 2]. With ``downsample`` "stride" or "pool", layers i with
    ``(i + 1) % downsample_every == 0`` halve the spatial size (stride-2 conv, or max pool 2).
    Head: "global_pool" (adaptive average pool to 1, flatten, linear) or "flatten" (flatten,
    linear). ``hidden`` (optional, default none) puts fully connected layers linear(h) ->
    activation before the final linear layer: with depth 0 that is an MLP (no convolution), the
    locality experiment's baseline. Without hidden layers the field is left out of the canonical
    JSON, so the ids of architectures that predate it are unchanged.

    Canonical form (so that one model has one ``arch_id``): with depth 0 the net is flatten +
    [hidden layers] + linear, and the unused fields must be ``batch_norm=False``,
    ``downsample="none"``, ``downsample_every=1``, ``head="flatten"``, and without hidden layers
    also ``activation="identity"``; without downsampling, ``downsample_every=1``; with
    downsampling, ``downsample_every <= depth``.

    Raises:
        ValueError: If a field is invalid or not in canonical form.
    """

    space_name = "cnn"

    channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    activation: str
    batch_norm: bool
    downsample: str
    downsample_every: int
    head: str
    hidden: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        # Lists (from JSON or by hand) become tuples so the instance stays hashable.
        object.__setattr__(self, "channels", check.int_tuple(f"{owner}.channels", self.channels, 1))
        object.__setattr__(
            self,
            "kernel_sizes",
            check.int_tuple(f"{owner}.kernel_sizes", self.kernel_sizes, 1, odd=True),
        )
        if len(self.kernel_sizes) != len(self.channels):
            raise ValueError(
                f"{owner}.kernel_sizes must have one entry per layer ({len(self.channels)}), "
                f"but got {check.show(self.kernel_sizes)}"
            )
        check_activation(self.activation, f"{owner}.activation")
        check.boolean(f"{owner}.batch_norm", self.batch_norm)
        check.one_of(f"{owner}.downsample", self.downsample, DOWNSAMPLES)
        check.int_at_least(f"{owner}.downsample_every", self.downsample_every, 1)
        check.one_of(f"{owner}.head", self.head, HEADS)
        object.__setattr__(self, "hidden", check.int_tuple(f"{owner}.hidden", self.hidden, 1))
        self._check_canonical(owner)

    def _check_canonical(self, owner: str) -> None:
        if self.depth == 0:
            for name, canonical in _UNUSED_AT_DEPTH_0.items():
                if name == "activation" and self.hidden:
                    continue  # the hidden layers use it
                if getattr(self, name) != canonical:
                    raise ValueError(
                        f"{owner} with depth 0 is flatten + linear; {name} must be "
                        f"{canonical!r}, but got {getattr(self, name)!r}"
                    )
        elif self.downsample == "none" and self.downsample_every != 1:
            raise ValueError(
                f"{owner}.downsample_every must be 1 when downsample is 'none', "
                f"but got {self.downsample_every}"
            )
        elif self.downsample != "none" and self.downsample_every > self.depth:
            raise ValueError(
                f"{owner}.downsample_every {self.downsample_every} > depth {self.depth} means no "
                f"layer downsamples; use downsample='none', downsample_every=1"
            )

    @classmethod
    def linear(cls) -> CNNArchitecture:
        """The depth-0 architecture: flatten + linear (the logistic-regression baseline)."""
        return cls(channels=(), kernel_sizes=(), **_UNUSED_AT_DEPTH_0)

    @classmethod
    def mlp(cls, hidden: tuple[int, ...], activation: str) -> CNNArchitecture:
        """A depth-0 architecture with hidden layers: flatten -> [linear -> activation]* -> linear.

        Args:
            hidden: Widths of the hidden layers, at least one.
            activation: The hidden layers' activation (a key of ACTIVATIONS or a variant).

        Raises:
            ValueError: If ``hidden`` is empty or holds a width < 1, or the activation is unknown.
        """
        if len(hidden) == 0:
            raise ValueError("CNNArchitecture.mlp needs at least one hidden layer; use linear()")
        fields = {**_UNUSED_AT_DEPTH_0, "activation": activation}
        return cls(channels=(), kernel_sizes=(), hidden=tuple(hidden), **fields)

    @property
    def depth(self) -> int:
        """Number of conv layers."""
        return len(self.channels)

    def downsamples_at(self, layer: int) -> bool:
        """Whether conv layer ``layer`` (0-based) halves the spatial size."""
        return self.downsample != "none" and (layer + 1) % self.downsample_every == 0

    def summary(self) -> str:
        mlp = f" mlp{_bracket(self.hidden)}" if self.hidden else ""
        if self.depth == 0:
            return f"cnn d0 flatten{mlp} {self.activation}" if self.hidden else "cnn d0 flatten"
        kernels = set(self.kernel_sizes)
        kernel = (
            f"k{self.kernel_sizes[0]}" if len(kernels) == 1 else f"k{_bracket(self.kernel_sizes)}"
        )
        downsample = self.downsample
        if self.downsample != "none" and self.downsample_every != 1:
            downsample += f"/{self.downsample_every}"
        return " ".join(
            [
                "cnn",
                f"d{self.depth}",
                f"c{_bracket(self.channels)}",
                kernel,
                self.activation,
                "bn" if self.batch_norm else "nobn",
                downsample,
                _HEAD_ABBREVIATIONS[self.head],
            ]
        ) + mlp

    def flat_params(self) -> dict[str, FlatValue]:
        return {**super().flat_params(), "depth": self.depth}

    def _plan(self, num_classes: int) -> NetworkPlan:
        segments: list[Layer] = []
        for index, (channels, kernel_size) in enumerate(
            zip(self.channels, self.kernel_sizes, strict=True)
        ):
            down = self.downsamples_at(index)
            stride = 2 if down and self.downsample == "stride" else 1
            # A bias before batch norm is cancelled by its mean subtraction: omit it.
            layers: list[Layer] = [Conv(channels, kernel_size, stride, bias=not self.batch_norm)]
            if self.batch_norm:
                layers.append(BatchNorm())
            layers.append(Activation(self.activation))
            if down and self.downsample == "pool":
                layers.append(MaxPool())
            segments.append(Sequential(tuple(layers)))
        head: list[Layer] = [GlobalAvgPool()] if self.head == "global_pool" else []
        head.append(Flatten())
        for width in self.hidden:
            head += [Linear(width), Activation(self.activation)]
        head.append(Linear(num_classes))
        return NetworkPlan(tuple(segments), Sequential(tuple(head)), self.activation)


def _bracket(values: tuple[int, ...]) -> str:
    return "[" + ",".join(str(value) for value in values) + "]"


@register_space
@dataclasses.dataclass(frozen=True, kw_only=True)
class CNNSpace(SearchSpace):
    """Choices for plain CNNs. Keyword arguments are the keys under ``space:`` in a config.

    Args:
        depth: ``[low, high]`` number of conv layers, ``0 <= low``; 0 is flatten + linear.
        channels: Choices of output channels, drawn per layer.
        kernel_sizes: Choices of odd kernel sizes.
        per_layer_kernel: Draw one kernel size per layer instead of one for the net.
        activations: Choices of activation names (keys of ACTIVATIONS).
        batch_norm: Choices among true and false.
        downsample: Choices among "stride", "pool", "none".
        downsample_every: Choices of n: downsample at layers i with (i + 1) % n == 0.
        head: Choices among "global_pool", "flatten".
        ordered_choices: Draw channels and kernel sizes by their rank among the choices (an
            integer parameter "channels_{i}_rank") instead of as categories, so the sampler
            can learn that neighbouring values behave alike (see ``suggest_choice``). On
            MNIST-1D it met item 2 of docs/SEARCH_QUALITY.md as often as categories, for more epochs.

    Raises:
        ValueError: Naming the key and value of the first invalid entry.
    """

    name = "cnn"
    architecture_type = CNNArchitecture

    depth: tuple[int, int] = (1, 4)
    channels: tuple[int, ...] = (8, 16, 32, 64)
    kernel_sizes: tuple[int, ...] = (3, 5)
    per_layer_kernel: bool = False
    activations: tuple[str, ...] = tuple(ACTIVATIONS)
    batch_norm: tuple[bool, ...] = (True, False)
    downsample: tuple[str, ...] = DOWNSAMPLES
    downsample_every: tuple[int, ...] = (1, 2)
    head: tuple[str, ...] = HEADS
    ordered_choices: bool = False

    def __post_init__(self) -> None:
        validated: dict[str, Any] = dict(
            depth=check.int_range("space.depth", self.depth, 0),
            channels=check.int_choices("space.channels", self.channels),
            kernel_sizes=check.int_choices("space.kernel_sizes", self.kernel_sizes, odd=True),
            per_layer_kernel=check.boolean("space.per_layer_kernel", self.per_layer_kernel),
            activations=check.activation_choices("space.activations", self.activations),
            batch_norm=check.bool_choices("space.batch_norm", self.batch_norm),
            downsample=check.str_choices("space.downsample", self.downsample, DOWNSAMPLES),
            downsample_every=check.int_choices("space.downsample_every", self.downsample_every),
            head=check.str_choices("space.head", self.head, HEADS),
            ordered_choices=check.boolean("space.ordered_choices", self.ordered_choices),
        )
        for name, value in validated.items():
            object.__setattr__(self, name, value)

    def sample(self, trial: Trial) -> CNNArchitecture:
        """Draw a CNN architecture.

        Parameter names: "depth", "channels_{i}", "kernel_size" (or "kernel_size_{i}" with
        per_layer_kernel), "activation", "batch_norm", "downsample", "downsample_every", "head";
        with ordered_choices, the channel and kernel names end in "_rank".
        Parameters that cannot affect the model (everything after "depth" at depth 0,
        "downsample_every" without downsampling) are not drawn.

        Args:
            trial: An ``optuna.Trial`` or a ``RandomTrial``.

        Returns:
            The architecture in canonical form.
        """
        depth = trial.suggest_int("depth", *self.depth)
        if depth == 0:
            return CNNArchitecture.linear()
        ordered = self.ordered_choices
        channels = tuple(
            suggest_choice(trial, f"channels_{i}", self.channels, ordered) for i in range(depth)
        )
        if self.per_layer_kernel:
            kernel_sizes = tuple(
                suggest_choice(trial, f"kernel_size_{i}", self.kernel_sizes, ordered)
                for i in range(depth)
            )
        else:
            kernel_sizes = (suggest_choice(trial, "kernel_size", self.kernel_sizes, ordered),) * depth
        activation = trial.suggest_categorical("activation", self.activations)
        batch_norm = trial.suggest_categorical("batch_norm", self.batch_norm)
        downsample = trial.suggest_categorical("downsample", self.downsample)
        downsample_every = 1
        if downsample != "none":
            downsample_every = trial.suggest_categorical("downsample_every", self.downsample_every)
            if downsample_every > depth:
                # No layer would downsample: the same model as "none", so the same arch_id.
                downsample, downsample_every = "none", 1
        head = trial.suggest_categorical("head", self.head)
        return CNNArchitecture(
            channels=channels,
            kernel_sizes=kernel_sizes,
            activation=activation,
            batch_norm=batch_norm,
            downsample=downsample,
            downsample_every=downsample_every,
            head=head,
        )
