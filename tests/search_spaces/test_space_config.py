"""Space configuration: defaults, and errors that name the offending key and value."""

from __future__ import annotations

import dataclasses
import random

import pytest

from search_spaces import (
    ACTIVATIONS,
    SPACES,
    Architecture,
    CNNArchitecture,
    CNNSpace,
    RandomTrial,
    ResNetSpace,
    SearchSpace,
    get_space,
    register_space,
)


def test_registry_holds_the_cnn_and_resnet_spaces():
    # The two spaces of the service are registered under their config names.
    assert SPACES["cnn"] is CNNSpace and SPACES["resnet"] is ResNetSpace


def test_cnn_defaults_are_the_documented_ones():
    space = get_space("cnn")
    # The defaults from the config reference, stored as tuples.
    assert space == CNNSpace(
        depth=(1, 4),
        channels=(8, 16, 32, 64),
        kernel_sizes=(3, 5),
        per_layer_kernel=False,
        activations=("relu", "gelu", "silu", "tanh", "sigmoid", "identity"),
        batch_norm=(True, False),
        downsample=("stride", "pool", "none"),
        downsample_every=(1, 2),
        head=("global_pool", "flatten"),
    )


def test_resnet_defaults_are_the_documented_ones():
    space = get_space("resnet")
    assert space == ResNetSpace(
        stem_width=(8, 16, 32),
        stages=(1, 3),
        blocks_per_stage=(1, 2, 3),
        widths=(8, 16, 32, 64),
        kernel_sizes=(3, 5),
        activations=tuple(ACTIVATIONS),
        block_forms=("post", "pre"),
    )


def test_yaml_lists_are_stored_as_tuples():
    space = get_space("cnn", depth=[0, 2], channels=[4, 8], activations=["relu"])
    # Lists from YAML become tuples: the space is immutable data.
    assert space.depth == (0, 2) and space.channels == (4, 8) and space.activations == ("relu",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.depth = (1, 1)  # type: ignore[misc]


def test_unknown_key_is_named_with_the_allowed_keys():
    with pytest.raises(ValueError) as error:
        get_space("cnn", depth=[1, 2], kernels=[3])
    # The unknown key is named as it appears in the YAML, and every allowed key is listed.
    assert str(error.value) == (
        "unknown key space.kernels for space 'cnn'; allowed keys: depth, channels, kernel_sizes, "
        "per_layer_kernel, activations, batch_norm, downsample, downsample_every, head, ordered_choices"
    )


def test_unknown_space_name_lists_the_registered_spaces():
    # A typo in `space.name` lists what exists.
    with pytest.raises(ValueError, match="^unknown space 'cnns'; registered spaces: cnn, resnet$"):
        get_space("cnns")


def test_bad_range_names_the_key_and_value():
    with pytest.raises(ValueError) as error:
        get_space("cnn", depth=[3, 1])
    # The exact message of the config reference.
    assert (
        str(error.value) == "space.depth must be [low, high] with 0 <= low <= high, but got [3, 1]"
    )


def test_unknown_activation_names_it_and_lists_the_options():
    with pytest.raises(ValueError) as error:
        get_space("resnet", activations=["relu", "swish"])
    # The key, the bad value and all known activations are in the message.
    assert str(error.value) == (
        "space.activations has unknown activation 'swish'; "
        "choose from relu, gelu, silu, tanh, sigmoid, identity"
    )


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        (
            "cnn",
            dict(depth=[-1, 2]),
            "space.depth must be [low, high] with 0 <= low <= high, but got [-1, 2]",
        ),
        ("cnn", dict(depth=3), "space.depth must be [low, high] with 0 <= low <= high, but got 3"),
        (
            "cnn",
            dict(depth=[1, True]),
            "space.depth must be [low, high] with 0 <= low <= high, but got [1, True]",
        ),
        (
            "cnn",
            dict(channels=[]),
            "space.channels must be a non-empty list of integers >= 1, but got []",
        ),
        (
            "cnn",
            dict(channels=[8, 0]),
            "space.channels must be a non-empty list of integers >= 1, but got [8, 0]",
        ),
        ("cnn", dict(channels=[8, 8]), "space.channels must not repeat a value, but got [8, 8]"),
        (
            "cnn",
            dict(kernel_sizes=[3, 4]),
            "space.kernel_sizes must be a non-empty list of odd integers >= 1",
        ),
        (
            "cnn",
            dict(per_layer_kernel="yes"),
            "space.per_layer_kernel must be true or false, but got 'yes'",
        ),
        (
            "resnet",
            dict(ordered_choices=1),
            "space.ordered_choices must be true or false, but got 1",
        ),
        (
            "cnn",
            dict(activations="relu"),
            "space.activations must be a non-empty list of activation names, but got 'relu'",
        ),
        (
            "cnn",
            dict(batch_norm=[1]),
            "space.batch_norm must be a non-empty list of booleans, but got [1]",
        ),
        (
            "cnn",
            dict(downsample=["avg"]),
            "space.downsample has unknown value 'avg'; choose from stride, pool, none",
        ),
        (
            "cnn",
            dict(downsample_every=[0]),
            "space.downsample_every must be a non-empty list of integers >= 1, but got [0]",
        ),
        (
            "cnn",
            dict(head=["mlp"]),
            "space.head has unknown value 'mlp'; choose from global_pool, flatten",
        ),
        (
            "resnet",
            dict(stages=[0, 2]),
            "space.stages must be [low, high] with 1 <= low <= high, but got [0, 2]",
        ),
        (
            "resnet",
            dict(stem_width=[[8]]),
            "space.stem_width must be a non-empty list of integers >= 1, but got [[8]]",
        ),
        (
            "resnet",
            dict(blocks_per_stage=[0]),
            "space.blocks_per_stage must be a non-empty list of integers >= 1",
        ),
        (
            "resnet",
            dict(widths=[2.5]),
            "space.widths must be a non-empty list of integers >= 1, but got [2.5]",
        ),
        (
            "resnet",
            dict(block_forms=["bottleneck"]),
            "space.block_forms has unknown value 'bottleneck'; choose from post, pre",
        ),
    ],
)
def test_bad_values_are_named_with_key_and_value(name, config, message):
    # Each bad value is refused in the constructor with a message naming the key and the value.
    with pytest.raises(ValueError) as error:
        get_space(name, **config)
    assert str(error.value).startswith(message)


def test_register_space_refuses_duplicates():
    @dataclasses.dataclass(frozen=True)
    class OtherCNNSpace(CNNSpace):
        name = "cnn"

    # A second space under a taken name is refused, naming the registered class.
    with pytest.raises(ValueError, match="space 'cnn' is already registered \\(CNNSpace\\)"):
        register_space(OtherCNNSpace)
    # The registry is unchanged.
    assert SPACES["cnn"] is CNNSpace


@dataclasses.dataclass(frozen=True)
class WideLinearArchitecture(CNNArchitecture):
    """A test-only architecture type: a one-layer CNN under its own space name."""

    space_name = "wide_linear"


class WideLinearSpace(SearchSpace):
    """A test-only space with one config key."""

    name = "wide_linear"
    architecture_type = WideLinearArchitecture

    def __init__(self, widths: tuple[int, ...] = (4, 8)) -> None:
        self.widths = tuple(widths)

    def sample(self, trial):
        width = trial.suggest_categorical("width", self.widths)
        return WideLinearArchitecture((width,), (3,), "relu", False, "none", 1, "flatten")


def test_register_space_extends_get_space_and_from_dict():
    register_space(WideLinearSpace)
    try:
        space = get_space("wide_linear", widths=[16])
        arch = space.sample(RandomTrial(random.Random(0)))
        # The new space is created by name, samples, and its architectures round-trip by "space".
        assert arch.to_dict()["space"] == "wide_linear" and arch.channels == (16,)
        assert Architecture.from_json(arch.to_json()) == arch
        # Its config keys come from its constructor.
        with pytest.raises(ValueError, match="allowed keys: widths$"):
            get_space("wide_linear", depth=[1, 2])
    finally:
        SPACES.pop("wide_linear")


def test_register_space_refuses_a_mismatched_architecture_or_a_non_space():
    class Mismatched(WideLinearSpace):
        name = "mismatched"

    # The architecture type's space_name must be the space's name, or from_dict could not dispatch.
    with pytest.raises(
        ValueError, match="its architecture_type WideLinearArchitecture has space_name"
    ):
        register_space(Mismatched)
    # Only SearchSpace subclasses are registered.
    with pytest.raises(TypeError, match="register_space needs a SearchSpace subclass"):
        register_space(CNNArchitecture)  # type: ignore[arg-type]
    assert "mismatched" not in SPACES


def test_a_name_key_left_in_the_config_is_an_unknown_key():
    # `name` selects the space and is no config key: left in, it is reported as unknown.
    with pytest.raises(ValueError, match="^unknown key space.name for space 'cnn'"):
        get_space("cnn", name="cnn")
