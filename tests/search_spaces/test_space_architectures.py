"""Architectures: frozen, hashable, canonical JSON round trip and a stable id."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_spaces import (
    ACTIVATIONS,
    Architecture,
    CNNArchitecture,
    ResNetArchitecture,
)

# No example database: failures replay from the printed example, not from files. (Hypothesis
# still caches constants in .hypothesis/, which .gitignore covers.)
HYPOTHESIS = settings(max_examples=100, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cnn_architectures(draw) -> CNNArchitecture:
    depth = draw(st.integers(0, 5))
    if depth == 0:
        return CNNArchitecture.linear()
    downsample = draw(st.sampled_from(["stride", "pool", "none"]))
    return CNNArchitecture(
        channels=tuple(draw(st.lists(st.integers(1, 256), min_size=depth, max_size=depth))),
        kernel_sizes=tuple(
            draw(st.lists(st.sampled_from([1, 3, 5, 7]), min_size=depth, max_size=depth))
        ),
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        batch_norm=draw(st.booleans()),
        downsample=downsample,
        downsample_every=1 if downsample == "none" else draw(st.integers(1, depth)),
        head=draw(st.sampled_from(["global_pool", "flatten"])),
    )


@st.composite
def resnet_architectures(draw) -> ResNetArchitecture:
    stages = draw(st.integers(1, 4))
    return ResNetArchitecture(
        stem_width=draw(st.integers(1, 128)),
        blocks=tuple(draw(st.lists(st.integers(1, 4), min_size=stages, max_size=stages))),
        widths=tuple(draw(st.lists(st.integers(1, 128), min_size=stages, max_size=stages))),
        kernel_size=draw(st.sampled_from([1, 3, 5, 7])),
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        block_form=draw(st.sampled_from(["post", "pre"])),
    )


architectures = st.one_of(cnn_architectures(), resnet_architectures())

CNN = CNNArchitecture((16, 32, 32), (3, 3, 3), "relu", True, "stride", 1, "global_pool")
RESNET = ResNetArchitecture(16, (2, 1), (16, 32), 3, "relu", "post")


@HYPOTHESIS
@given(architectures)
def test_json_and_dict_round_trips_return_an_equal_architecture(arch):
    # from_json(to_json(a)) == a, through the base class's dispatch on "space".
    assert Architecture.from_json(arch.to_json()) == arch
    # The same through the dict form, and the class is preserved.
    again = Architecture.from_dict(arch.to_dict())
    assert again == arch and type(again) is type(arch)
    # Equal architectures hash equally and share the id.
    assert hash(again) == hash(arch) and again.arch_id == arch.arch_id


@HYPOTHESIS
@given(architectures)
def test_arch_id_is_the_sha256_prefix_of_the_canonical_json(arch):
    text = arch.to_json()
    # Canonical: sorted keys, no spaces; so any key order in a stored dict gives the same id.
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    # The id is the first 12 hex characters of its SHA-256.
    assert arch.arch_id == hashlib.sha256(text.encode()).hexdigest()[:12]


@HYPOTHESIS
@given(architectures, architectures)
def test_different_architectures_have_different_ids(first, second):
    # Distinct architectures get distinct ids (no collision among the examples), equal ones equal.
    assert (first.arch_id == second.arch_id) == (first == second)


def test_arch_id_is_stable_across_versions():
    # Pinned values: a change here means stored ids (Optuna, MLflow, caches) no longer match.
    assert CNN.to_json() == (
        '{"activation":"relu","batch_norm":true,"channels":[16,32,32],"downsample":"stride",'
        '"downsample_every":1,"head":"global_pool","kernel_sizes":[3,3,3],"space":"cnn"}'
    )
    assert CNN.arch_id == hashlib.sha256(CNN.to_json().encode()).hexdigest()[:12]
    assert (CNN.arch_id, RESNET.arch_id) == ("56be8c429063", "110799a84723")


def test_architectures_are_frozen_and_hashable():
    # Fields cannot be reassigned: a sampled architecture is a value.
    with pytest.raises(dataclasses.FrozenInstanceError):
        CNN.activation = "gelu"  # type: ignore[misc]
    duplicate = CNNArchitecture([16, 32, 32], [3, 3, 3], "relu", True, "stride", 1, "global_pool")
    # Lists are stored as tuples, so an equal architecture built from lists dedups in a set.
    assert isinstance(duplicate.channels, tuple)
    assert len({CNN, duplicate, RESNET}) == 2


def test_summary_is_short_and_readable():
    # Space, depth, channels, kernel, activation, batch norm, downsampling, head.
    assert CNN.summary() == "cnn d3 c[16,32,32] k3 relu bn stride gap"
    per_layer = CNNArchitecture((8, 16), (3, 5), "gelu", False, "pool", 2, "flatten")
    assert per_layer.summary() == "cnn d2 c[8,16] k[3,5] gelu nobn pool/2 flatten"
    assert CNNArchitecture.linear().summary() == "cnn d0 flatten"
    assert RESNET.summary() == "resnet post stem16 k3 relu [16x2,32x1]"


def test_flat_params_are_scalars_with_tuples_joined():
    flat = CNN.flat_params()
    # Tuples are joined by commas; MLflow params must be scalars.
    assert flat["channels"] == "16,32,32" and flat["kernel_sizes"] == "3,3,3"
    assert flat["space"] == "cnn" and flat["depth"] == 3
    assert all(isinstance(value, str | int | float | bool) for value in flat.values())
    assert RESNET.flat_params()["blocks"] == "2,1" and RESNET.flat_params()["stages"] == 2


def test_from_dict_dispatches_on_space_and_rejects_mismatches():
    # The base class picks the subclass by "space".
    assert isinstance(Architecture.from_dict(RESNET.to_dict()), ResNetArchitecture)
    # A subclass refuses another space's dict.
    with pytest.raises(
        ValueError, match="CNNArchitecture.from_dict got an architecture of space 'resnet'"
    ):
        CNNArchitecture.from_dict(RESNET.to_dict())
    # An unknown space lists the registered ones.
    with pytest.raises(ValueError, match="unknown space 'mlp'; registered spaces: cnn, resnet"):
        Architecture.from_dict({**CNN.to_dict(), "space": "mlp"})


def test_from_dict_names_missing_and_unknown_keys():
    data = CNN.to_dict()
    del data["head"]
    data["width"] = 3
    # Both problems are named, with the expected fields.
    with pytest.raises(ValueError, match="missing keys head; unknown keys width") as error:
        Architecture.from_dict(data)
    assert "fields: activation, batch_norm" in str(error.value)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            dict(kernel_sizes=(4, 3, 3)),
            "CNNArchitecture.kernel_sizes must be an odd integer >= 1, but got 4",
        ),
        (dict(kernel_sizes=(3, 3)), "kernel_sizes must have one entry per layer (3)"),
        (dict(channels=(16, 0, 32)), "CNNArchitecture.channels must be an integer >= 1, but got 0"),
        (
            dict(activation="swish"),
            "CNNArchitecture.activation has unknown activation 'swish'; choose from relu",
        ),
        (
            dict(downsample="avg"),
            "CNNArchitecture.downsample must be one of stride, pool, none, but got 'avg'",
        ),
        (dict(batch_norm=1), "CNNArchitecture.batch_norm must be true or false, but got 1"),
        (
            dict(downsample="none", downsample_every=2),
            "downsample_every must be 1 when downsample is 'none'",
        ),
        (dict(downsample_every=4), "downsample_every 4 > depth 3 means no layer downsamples"),
    ],
)
def test_invalid_cnn_fields_are_named_in_the_error(changes, fragment):
    # Each invalid field is rejected at construction, naming the field and the value.
    with pytest.raises(ValueError) as error:
        dataclasses.replace(CNN, **changes)
    assert fragment in str(error.value)


def test_depth_zero_cnn_has_one_canonical_form():
    # At depth 0 the unused fields are fixed, so the one flatten + linear model has one id.
    with pytest.raises(
        ValueError, match="with depth 0 is flatten \\+ linear; activation must be 'identity'"
    ):
        CNNArchitecture((), (), "relu", False, "none", 1, "flatten")
    assert (
        CNNArchitecture((), (), "identity", False, "none", 1, "flatten") == CNNArchitecture.linear()
    )


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            dict(kernel_size=2),
            "ResNetArchitecture.kernel_size must be an odd integer >= 1, but got 2",
        ),
        (dict(blocks=(), widths=()), "must be non-empty with one entry per stage"),
        (dict(widths=(16,)), "one entry per stage, but got blocks=[2, 1], widths=[16]"),
        (
            dict(block_form="mid"),
            "ResNetArchitecture.block_form must be one of post, pre, but got 'mid'",
        ),
        (dict(stem_width=0), "ResNetArchitecture.stem_width must be an integer >= 1, but got 0"),
    ],
)
def test_invalid_resnet_fields_are_named_in_the_error(changes, fragment):
    # Each invalid field is rejected at construction, naming the field and the value.
    with pytest.raises(ValueError) as error:
        dataclasses.replace(RESNET, **changes)
    assert fragment in str(error.value)
