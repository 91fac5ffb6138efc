"""build_model: every registered space builds models that run forward and backward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from search_spaces import (
    ACTIVATIONS,
    INITIALIZERS,
    SPACES,
    CNNArchitecture,
    ResidualBlock,
    ResNetArchitecture,
    SegmentedNet,
    build_model,
    get_space,
)

# The service's two input kinds: MNIST-1D (length 40) and scikit-learn digits (8x8 images).
INPUT_SHAPES = [(1, 40), (1, 8, 8)]
BATCH = 4


@pytest.mark.parametrize("input_shape", INPUT_SHAPES, ids=["1d", "2d"])
@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_every_space_builds_models_that_run_forward_and_backward(
    space_name, input_shape, sample_feasible, num_classes
):
    space = get_space(space_name)
    generator = torch.Generator().manual_seed(0)
    for arch in sample_feasible(space, input_shape, 20, 1000):
        model = build_model(arch, input_shape, num_classes)
        x = torch.randn(BATCH, *input_shape, generator=generator)
        out = model(x)
        # One logit vector per sample.
        assert out.shape == (BATCH, num_classes), arch.summary()
        # Initialization keeps the forward pass finite.
        assert torch.isfinite(out).all(), arch.summary()
        out.square().mean().backward()
        for name, parameter in model.named_parameters():
            # Every parameter is on the gradient path and its gradient is finite.
            assert parameter.grad is not None, f"{arch.summary()}: {name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{arch.summary()}: {name}"


def test_input_rank_selects_1d_or_2d_layers(num_classes):
    arch = CNNArchitecture((8,), (3,), "relu", True, "pool", 1, "global_pool")
    types_1d = {type(m) for m in build_model(arch, (1, 40), num_classes).modules()}
    types_2d = {type(m) for m in build_model(arch, (1, 8, 8), num_classes).modules()}
    # (C, L) builds 1-D layers only.
    assert {nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d} <= types_1d
    assert not types_1d & {nn.Conv2d, nn.BatchNorm2d}
    # (C, H, W) builds 2-D layers only.
    assert {nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d} <= types_2d
    assert not types_2d & {nn.Conv1d, nn.BatchNorm1d}


def test_cnn_layer_group_is_conv_norm_activation_pool(num_classes):
    arch = CNNArchitecture((8, 16), (3, 5), "gelu", True, "pool", 2, "flatten")
    model = build_model(arch, (2, 8, 8), num_classes)
    first, second = model.segments
    # Layer 0 does not downsample with every=2: conv -> bn -> act.
    assert [type(m) for m in first] == [nn.Conv2d, nn.BatchNorm2d, nn.GELU]
    # Layer 1 ((1 + 1) % 2 == 0) ends with the max pool.
    assert [type(m) for m in second] == [nn.Conv2d, nn.BatchNorm2d, nn.GELU, nn.MaxPool2d]
    # A conv followed by batch norm has no bias (the norm's mean subtraction cancels it).
    assert first[0].bias is None and first[0].kernel_size == (3, 3) and first[0].padding == (1, 1)
    # Flatten head: 16 channels x 4 x 4 after one pool.
    assert [type(m) for m in model.head] == [nn.Flatten, nn.Linear]
    assert model.head[1].in_features == 16 * 4 * 4


def test_cnn_without_batch_norm_has_conv_bias_and_stride_downsampling(num_classes):
    arch = CNNArchitecture((8,), (3,), "relu", False, "stride", 1, "global_pool")
    model = build_model(arch, (1, 40), num_classes)
    conv = model.segments[0][0]
    # Without batch norm the conv carries the bias; stride-2 conv is the downsampling.
    assert conv.bias is not None and conv.stride == (2,)
    assert [type(m) for m in model.head] == [nn.AdaptiveAvgPool1d, nn.Flatten, nn.Linear]


def test_depth_zero_cnn_is_flatten_then_linear(num_classes):
    model = build_model(CNNArchitecture.linear(), (1, 8, 8), num_classes)
    # No conv segment: a logistic-regression baseline on the raw 64 pixels.
    assert len(model.segments) == 0
    assert [type(m) for m in model.head] == [nn.Flatten, nn.Linear]
    assert model.head[1].in_features == 64


@pytest.mark.parametrize("block_form", ["post", "pre"])
def test_resnet_blocks_expose_residual_and_shortcut(block_form, num_classes):
    arch = ResNetArchitecture(8, (2, 1), (8, 16), 3, "relu", block_form)
    model = build_model(arch, (1, 8, 8), num_classes).eval()
    stem, *blocks = model.segments
    # Segments: the stem, then one segment per residual block (2 + 1).
    assert isinstance(model, SegmentedNet) and len(blocks) == 3
    assert all(isinstance(block, ResidualBlock) for block in blocks)
    # Identity shortcut where the shape is kept; a projection (1x1 conv, bn) where it changes.
    assert isinstance(blocks[0].shortcut, nn.Identity) and isinstance(
        blocks[1].shortcut, nn.Identity
    )
    projection = blocks[2].shortcut
    assert [type(m) for m in projection] == [nn.Conv2d, nn.BatchNorm2d]
    assert projection[0].kernel_size == (1, 1) and projection[0].stride == (2, 2)
    x = torch.randn(2, 8, 8, 8)
    block = blocks[0]
    expected = block.activation(block.residual(x) + block.shortcut(x))
    # A block computes act(F_k(x) + shortcut(x)); diagnostics rely on that decomposition.
    torch.testing.assert_close(block(x), expected)
    if block_form == "pre":
        # Pre-activation: nothing after the addition, so the block is exactly x + F_k(x).
        torch.testing.assert_close(block(x), x + block.residual(x))
        # Pre-activation ends with a final bn + act in the head.
        assert isinstance(model.head[0], nn.BatchNorm2d)


def test_forward_is_head_of_the_chained_segments(num_classes):
    arch = ResNetArchitecture(8, (1, 1), (8, 16), 3, "silu", "post")
    model = build_model(arch, (1, 40), num_classes).eval()
    x = torch.randn(3, 1, 40)
    h = x
    for segment in model.segments:
        h = segment(h)
    # The model is exactly head(segments[-1](...segments[0](x))): the curve's segments in order.
    torch.testing.assert_close(model(x), model.head(h))


def test_activation_and_initializer_tables_name_the_same_activations():
    # Every activation has an initialization, and no initialization is orphaned.
    assert set(ACTIVATIONS) == set(INITIALIZERS)


@pytest.mark.parametrize(
    ("activation", "expected_std"),
    [
        ("relu", lambda fan_in, fan_out: math.sqrt(2 / fan_in)),  # He, fan_in
        ("gelu", lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
        ("silu", lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
        ("sigmoid", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),  # Xavier
        ("identity", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
        ("tanh", lambda fan_in, fan_out: 5 / 3 * math.sqrt(2 / (fan_in + fan_out))),
    ],
)
def test_initialization_follows_the_activation(activation, expected_std, num_classes):
    arch = CNNArchitecture((64, 64), (3, 3), activation, False, "none", 1, "global_pool")
    model = build_model(arch, (1, 40), num_classes, generator=torch.Generator().manual_seed(0))
    conv = model.segments[1][0]  # 64 -> 64, kernel 3: 36,864 weights, fan_in = fan_out = 192
    std = expected_std(64 * 3, 64 * 3)
    # The empirical std of 36,864 draws is within 3% of the table's scale.
    assert conv.weight.std().item() == pytest.approx(std, rel=0.03)
    # Biases start at zero.
    assert torch.count_nonzero(conv.bias) == 0 and torch.count_nonzero(model.head[2].bias) == 0


def test_batch_norm_starts_fresh(num_classes):
    arch = ResNetArchitecture(8, (1,), (16,), 3, "relu", "pre")
    model = build_model(arch, (1, 8, 8), num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            # Built on the meta device, batch norms are reset: unit scale, zero shift, fresh stats.
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
            assert torch.equal(module.running_var, torch.ones_like(module.running_var))
            assert module.num_batches_tracked.item() == 0


def test_generator_makes_builds_reproducible_without_touching_global_rng(num_classes):
    arch = ResNetArchitecture(8, (1, 1), (8, 16), 3, "relu", "post")
    global_state = torch.get_rng_state()
    first = build_model(arch, (1, 40), num_classes, generator=torch.Generator().manual_seed(7))
    second = build_model(arch, (1, 40), num_classes, generator=torch.Generator().manual_seed(7))
    # With a generator the global RNG is not consumed (randomness is injected).
    assert torch.equal(torch.get_rng_state(), global_state)
    # The same generator seed gives the same initial weights.
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
