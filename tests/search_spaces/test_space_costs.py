"""layer_costs: the analytic curve equals what torch counts and sees; infeasibility is explicit."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import (
    SPACES,
    CNNArchitecture,
    InfeasibleArchitecture,
    LayerCost,
    ResNetArchitecture,
    build_model,
    get_space,
    layer_costs,
    total_macs,
    total_params,
)

INPUT_SHAPES = [(1, 40), (1, 8, 8)]
ARCHS_PER_CASE = 30  # x 2 shapes x 2 configs = 120 architectures per space

# Wider than the defaults, to reach depth 0, 1x1 and 7x7 kernels, per-layer kernels, 4 stages.
WIDE_CONFIGS = {
    "cnn": dict(depth=[0, 5], per_layer_kernel=True, kernel_sizes=[1, 3, 5, 7]),
    "resnet": dict(stages=[1, 4], kernel_sizes=[1, 3, 5], blocks_per_stage=[1, 2]),
}
CASES = [pytest.param(name, "default", {}, id=f"{name}-default") for name in sorted(SPACES)] + [
    pytest.param(name, "wide", config, id=f"{name}-wide")
    for name, config in sorted(WIDE_CONFIGS.items())
    if name in SPACES
]
KIND_OF_TYPE = {
    nn.Conv1d: "conv",
    nn.Conv2d: "conv",
    nn.Linear: "linear",
    nn.BatchNorm1d: "norm",
    nn.BatchNorm2d: "norm",
    nn.MaxPool1d: "pool",
    nn.MaxPool2d: "pool",
    nn.AdaptiveAvgPool1d: "pool",
    nn.AdaptiveAvgPool2d: "pool",
}


def measure(model: nn.Module, input_shape: tuple[int, ...], names: set[str]):
    """Run one sample through the model; return FlopCounterMode's per-module counts and the
    per-sample output shape of each named module seen by forward hooks."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda module, args, output, name=name: shapes.__setitem__(
                name, tuple(output.shape[1:])
            )
        )
        for name in names
    ]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, *input_shape))
    for handle in handles:
        handle.remove()
    # Keys are "<root class name>.<qualified module name>" (ModuleTracker in torch 2.13);
    # the root itself and "Global" hold the totals.
    prefix = type(model).__name__ + "."
    flops = {
        key.removeprefix(prefix): sum(counts.values())
        for key, counts in counter.get_flop_counts().items()
        if key.startswith(prefix)
    }
    return flops, counter.get_total_flops(), shapes


@pytest.mark.parametrize("input_shape", INPUT_SHAPES, ids=["1d", "2d"])
@pytest.mark.parametrize(("space_name", "config_name", "config"), CASES)
def test_layer_costs_match_flop_counter_forward_shapes_and_parameters(
    space_name, config_name, config, input_shape, sample_feasible, num_classes
):
    space = get_space(space_name, **config)
    first_seed = 0 if config_name == "default" else 5000
    for arch in sample_feasible(space, input_shape, ARCHS_PER_CASE, first_seed):
        costs = layer_costs(arch, input_shape, num_classes)
        model = build_model(arch, input_shape, num_classes)
        label = arch.summary()
        costed_modules = {
            name: KIND_OF_TYPE[type(module)]
            for name, module in model.named_modules()
            if type(module) in KIND_OF_TYPE
        }
        # One LayerCost per conv, linear, norm and pool module, named and ordered as in the model.
        assert [(c.name, c.kind) for c in costs] == list(costed_modules.items()), label
        flops, total_flops, shapes = measure(model, input_shape, set(costed_modules))
        for cost in costs:
            # The analytic output shape is the shape the layer really produces.
            assert cost.output_shape == shapes[cost.name], f"{label}: {cost}"
            if cost.kind in ("conv", "linear"):
                # MACs are FlopCounterMode's count / 2, layer by layer (it counts multiply + add).
                assert 2 * cost.macs == flops[cost.name], f"{label}: {cost}"
            else:
                # Norms and pools are not segments' MACs, and torch counts none for them.
                assert cost.macs == 0 and flops.get(cost.name, 0) == 0, f"{label}: {cost}"
        # The curve's length equals torch's total / 2.
        assert 2 * total_macs(costs) == total_flops, label
        # The analytic parameter count is the model's.
        assert total_params(costs) == sum(p.numel() for p in model.parameters()), label
        for cost in costs:
            module = model.get_submodule(cost.name)
            # ... and layer by layer.
            assert cost.params == sum(p.numel() for p in module.parameters()), f"{label}: {cost}"


def test_hand_computed_cnn_costs(num_classes):
    # 8x8 -> stride-2 conv to 8x4x4 -> stride-2 conv to 16x2x2 -> pool -> linear.
    arch = CNNArchitecture((8, 16), (3, 3), "relu", True, "stride", 1, "global_pool")
    costs = layer_costs(arch, (1, 8, 8), num_classes)
    expected = [
        LayerCost("segments.0.0", "conv", (8, 4, 4), 8 * 1 * 9 * 16, 8 * 1 * 9),
        LayerCost("segments.0.1", "norm", (8, 4, 4), 0, 2 * 8),
        LayerCost("segments.1.0", "conv", (16, 2, 2), 16 * 8 * 9 * 4, 16 * 8 * 9),
        LayerCost("segments.1.1", "norm", (16, 2, 2), 0, 2 * 16),
        LayerCost("head.0", "pool", (16, 1, 1), 0, 0),
        LayerCost("head.2", "linear", (10,), 16 * 10, 16 * 10 + 10),
    ]
    # C_out * C_in * prod(kernel) * prod(output size) per conv, in * out per linear.
    assert costs == expected
    assert total_macs(costs) == 5920 and total_params(costs) == 1442


def test_hand_computed_resnet_costs(num_classes):
    # Stem 8 channels, one post-activation block widening to 16 (so a 1x1 projection), length 40.
    arch = ResNetArchitecture(8, (1,), (16,), 3, "relu", "post")
    costs = {cost.name: cost for cost in layer_costs(arch, (1, 40), num_classes)}
    # Each conv keeps length 40 (stride 1, padding 1).
    assert costs["segments.0.0"].macs == 8 * 1 * 3 * 40
    assert costs["segments.1.residual.0"].macs == 16 * 8 * 3 * 40
    assert costs["segments.1.residual.3"].macs == 16 * 16 * 3 * 40
    assert costs["segments.1.shortcut.0"].macs == 16 * 8 * 1 * 40
    assert costs["head.2"].macs == 16 * 10
    # Totals add up to the sum of those segments; the params are the weights, norms and bias.
    assert total_macs(costs.values()) == 960 + 15360 + 30720 + 5120 + 160
    assert total_params(costs.values()) == 24 + 16 + 384 + 32 + 768 + 32 + 128 + 32 + 170


def test_depth_zero_costs_one_linear_layer_over_the_raw_input(num_classes):
    costs = layer_costs(CNNArchitecture.linear(), (1, 8, 8), num_classes)
    # Only the head's linear layer: 64 inputs x 10 outputs, plus 10 biases.
    assert costs == [LayerCost("head.1", "linear", (10,), 640, 650)]


def test_pooling_every_layer_four_times_on_8x8_is_infeasible(num_classes):
    arch = CNNArchitecture((8, 8, 8, 8), (3,) * 4, "relu", True, "pool", 1, "global_pool")
    with pytest.raises(InfeasibleArchitecture) as error:
        layer_costs(arch, (1, 8, 8), num_classes)
    # 8 -> 4 -> 2 -> 1 -> 0: the fourth pool (segments.3.3) is named, with the reason.
    assert str(error.value) == (
        "infeasible: layer segments.3.3 would have spatial size 0x0 "
        "(input 8x8 after 4 downsamplings)"
    )
    # build_model refuses the same architecture with the same error, before allocating anything.
    with pytest.raises(InfeasibleArchitecture, match=r"^infeasible: layer segments\.3\.3"):
        build_model(arch, (1, 8, 8), num_classes)
    # The error is a ValueError, so it is handled like any other bad user value.
    assert isinstance(error.value, ValueError)


def test_the_same_architecture_is_feasible_on_length_40(num_classes):
    arch = CNNArchitecture((8, 8, 8, 8), (3,) * 4, "relu", True, "pool", 1, "global_pool")
    costs = layer_costs(arch, (1, 40), num_classes)
    # 40 -> 20 -> 10 -> 5 -> 2 after the four pools.
    assert costs[-3].name == "segments.3.3" and costs[-3].output_shape == (8, 2)
    assert build_model(arch, (1, 40), num_classes)(torch.randn(2, 1, 40)).shape == (2, num_classes)


def test_stride_downsampling_bottoms_out_at_size_one(num_classes):
    # A stride-2 conv with padding k//2 maps size 1 to size 1 (floor((1 + 2p - k) / 2) + 1 = 1),
    # so unlike pooling it never becomes infeasible: 8 -> 4 -> 2 -> 1 -> 1.
    arch = CNNArchitecture((8, 8, 8, 8), (3,) * 4, "relu", True, "stride", 1, "global_pool")
    costs = layer_costs(arch, (1, 8, 8), num_classes)
    assert [c.output_shape for c in costs if c.kind == "conv"][-2:] == [(8, 1, 1), (8, 1, 1)]


@pytest.mark.parametrize(
    ("input_shape", "num_classes_value", "fragment"),
    [
        ((1,), 10, "input_shape must be (C, L) or (C, H, W)"),
        ((1, 2, 3, 4), 10, "input_shape must be (C, L) or (C, H, W)"),
        ((1, 0), 10, "but got [1, 0]"),
        ((1, 8, 8), 0, "num_classes must be an integer >= 1, but got 0"),
    ],
)
def test_invalid_input_shape_or_num_classes_is_a_value_error(
    input_shape, num_classes_value, fragment
):
    arch = CNNArchitecture((8,), (3,), "relu", True, "none", 1, "global_pool")
    # The message says which argument is wrong and what was given.
    with pytest.raises(ValueError) as error:
        layer_costs(arch, input_shape, num_classes_value)
    assert fragment in str(error.value)
