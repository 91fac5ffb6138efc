"""The ``resnet`` space: a stem and stages of basic residual blocks (He 2015 / He 2016)."""

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
    NetworkPlan,
    Residual,
    Sequential,
)
from ._trial import Trial, suggest_choice

BLOCK_FORMS = ("post", "pre")


@dataclasses.dataclass(frozen=True)
class ResNetArchitecture(Architecture):
    """A ResNet of basic blocks: each block is a near-identity segment I + F_k of the curve.

    Stem: conv(kernel_size) -> batch norm -> activation, to ``stem_width`` channels. Stage s has
    ``blocks[s]`` blocks of width ``widths[s]``; its first block has stride 2, except in stage 0.
    Block forms: "post" (He et al. 2015) residual = conv-bn-act-conv-bn, then add, then act;
    "pre" (He et al. 2016) residual = bn-act-conv-bn-act-conv, then add. Shortcuts are identities
    except where stride or width changes: there a projection, 1x1 conv with the block's stride + bn.
    Head: ["pre": final bn -> act] -> global average pool -> linear. Convs have no bias: a batch
    norm follows each (for the last conv of a pre-activation block, after the addition).

    Raises:
        ValueError: If a field is invalid.
    """

    space_name = "resnet"

    stem_width: int
    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    kernel_size: int
    activation: str
    block_form: str

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check.int_at_least(f"{owner}.stem_width", self.stem_width, 1)
        # Lists (from JSON or by hand) become tuples so the instance stays hashable.
        object.__setattr__(self, "blocks", check.int_tuple(f"{owner}.blocks", self.blocks, 1))
        object.__setattr__(self, "widths", check.int_tuple(f"{owner}.widths", self.widths, 1))
        if len(self.blocks) == 0 or len(self.widths) != len(self.blocks):
            raise ValueError(
                f"{owner}.blocks and .widths must be non-empty with one entry per stage, "
                f"but got blocks={check.show(self.blocks)}, widths={check.show(self.widths)}"
            )
        # Odd kernels keep stride-1 blocks size-preserving and make stride-2 blocks match the
        # 1x1 projection: floor((n - 1) / 2) + 1 on both branches.
        check.int_at_least(f"{owner}.kernel_size", self.kernel_size, 1, odd=True)
        check_activation(self.activation, f"{owner}.activation")
        check.one_of(f"{owner}.block_form", self.block_form, BLOCK_FORMS)

    @property
    def stages(self) -> int:
        """Number of stages."""
        return len(self.blocks)

    def summary(self) -> str:
        stages = ",".join(
            f"{width}x{count}" for width, count in zip(self.widths, self.blocks, strict=True)
        )
        return (
            f"resnet {self.block_form} stem{self.stem_width} k{self.kernel_size} "
            f"{self.activation} [{stages}]"
        )

    def flat_params(self) -> dict[str, FlatValue]:
        return {**super().flat_params(), "stages": self.stages}

    def _plan(self, num_classes: int) -> NetworkPlan:
        act = Activation(self.activation)
        k = self.kernel_size
        segments: list[Layer] = [Sequential((Conv(self.stem_width, k), BatchNorm(), act))]
        in_width = self.stem_width
        for stage, (count, width) in enumerate(zip(self.blocks, self.widths, strict=True)):
            for block in range(count):
                stride = 2 if stage > 0 and block == 0 else 1
                if self.block_form == "post":
                    residual = (
                        Conv(width, k, stride),
                        BatchNorm(),
                        act,
                        Conv(width, k),
                        BatchNorm(),
                    )
                    after_add = self.activation
                else:
                    residual = (
                        BatchNorm(),
                        act,
                        Conv(width, k, stride),
                        BatchNorm(),
                        act,
                        Conv(width, k),
                    )
                    after_add = "identity"
                shortcut = None
                if stride != 1 or width != in_width:
                    shortcut = Sequential((Conv(width, 1, stride), BatchNorm()))
                segments.append(Residual(Sequential(residual), shortcut, after_add))
                in_width = width
        head: list[Layer] = [BatchNorm(), act] if self.block_form == "pre" else []
        head += [GlobalAvgPool(), Flatten(), Linear(num_classes)]
        return NetworkPlan(tuple(segments), Sequential(tuple(head)), self.activation)


@register_space
@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetSpace(SearchSpace):
    """Choices for ResNets. Keyword arguments are the keys under ``space:`` in a config.

    Args:
        stem_width: Choices of stem output channels.
        stages: ``[low, high]`` number of stages, ``1 <= low``.
        blocks_per_stage: Choices of blocks, drawn per stage.
        widths: Choices of channels, drawn per stage.
        kernel_sizes: Choices of odd kernel sizes (one for the whole net).
        activations: Choices of activation names (keys of ACTIVATIONS).
        block_forms: Choices among "post" and "pre".
        ordered_choices: Draw stem width, blocks, widths and kernel size by their rank among
            the choices (integer parameters "width_{s}_rank" ...) instead of as categories (see
            ``suggest_choice``).

    Raises:
        ValueError: Naming the key and value of the first invalid entry.
    """

    name = "resnet"
    architecture_type = ResNetArchitecture

    stem_width: tuple[int, ...] = (8, 16, 32)
    stages: tuple[int, int] = (1, 3)
    blocks_per_stage: tuple[int, ...] = (1, 2, 3)
    widths: tuple[int, ...] = (8, 16, 32, 64)
    kernel_sizes: tuple[int, ...] = (3, 5)
    activations: tuple[str, ...] = tuple(ACTIVATIONS)
    block_forms: tuple[str, ...] = BLOCK_FORMS
    ordered_choices: bool = False

    def __post_init__(self) -> None:
        validated: dict[str, Any] = dict(
            stem_width=check.int_choices("space.stem_width", self.stem_width),
            stages=check.int_range("space.stages", self.stages, 1),
            blocks_per_stage=check.int_choices("space.blocks_per_stage", self.blocks_per_stage),
            widths=check.int_choices("space.widths", self.widths),
            kernel_sizes=check.int_choices("space.kernel_sizes", self.kernel_sizes, odd=True),
            activations=check.activation_choices("space.activations", self.activations),
            block_forms=check.str_choices("space.block_forms", self.block_forms, BLOCK_FORMS),
            ordered_choices=check.boolean("space.ordered_choices", self.ordered_choices),
        )
        for name, value in validated.items():
            object.__setattr__(self, name, value)

    def sample(self, trial: Trial) -> ResNetArchitecture:
        """Draw a ResNet architecture.

        Parameter names: "stem_width", "stages", "blocks_{s}", "width_{s}", "kernel_size",
        "activation", "block_form"; with ordered_choices, "stem_width", "blocks_{s}", "width_{s}"
        and "kernel_size" end in "_rank".

        Args:
            trial: An ``optuna.Trial`` or a ``RandomTrial``.

        Returns:
            The sampled architecture.
        """
        ordered = self.ordered_choices
        stem_width = suggest_choice(trial, "stem_width", self.stem_width, ordered)
        stages = trial.suggest_int("stages", *self.stages)
        blocks = tuple(
            suggest_choice(trial, f"blocks_{s}", self.blocks_per_stage, ordered)
            for s in range(stages)
        )
        widths = tuple(suggest_choice(trial, f"width_{s}", self.widths, ordered) for s in range(stages))
        return ResNetArchitecture(
            stem_width=stem_width,
            blocks=blocks,
            widths=widths,
            kernel_size=suggest_choice(trial, "kernel_size", self.kernel_sizes, ordered),
            activation=trial.suggest_categorical("activation", self.activations),
            block_form=trial.suggest_categorical("block_form", self.block_forms),
        )
