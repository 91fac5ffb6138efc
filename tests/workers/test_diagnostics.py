"""workers.diagnose: the geometry diagnostics of a network, on real models built from architectures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nas.diagnostic_plots import diagnostics_figure
from search_spaces import CNNArchitecture, LayerCost, ResNetArchitecture, build_model, layer_costs
from workers import diagnose
from workers._diagnostics import complexity_balance, input_arc, jacobian_msv

SHAPE = (1, 8, 8)
CLASSES = 10


@pytest.fixture(autouse=True)
def single_torch_thread():
    # Tiny models on a shared 2-core machine: one intra-op thread is fastest and deterministic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def x_val() -> np.ndarray:
    # Standardized 8x8 "images": what the digits validation split looks like to the network.
    return np.random.default_rng(0).normal(size=(96, *SHAPE)).astype(np.float32)


def plain(activation: str, depth: int, width: int = 8) -> CNNArchitecture:
    return CNNArchitecture((width,) * depth, (3,) * depth, activation, False, "none", 1, "flatten")


def diagnosed(arch, x_val, seed: int = 0, **sizes) -> dict[str, float]:
    model = build_model(arch, SHAPE, CLASSES, generator=torch.Generator().manual_seed(seed))
    return diagnose(model, arch, x_val, layer_costs(arch, SHAPE, CLASSES), seed=seed, **sizes)


def test_complexity_balance_entropy_and_max_share():
    def cost(macs: int, kind: str = "conv") -> LayerCost:
        return LayerCost("layer", kind, (1,), macs, 0)

    equal = complexity_balance([cost(100), cost(0, "norm"), cost(100), cost(0, "pool"), cost(100, "linear")])
    # Three equal segments: normalized entropy 1, each holds a third; norm and pool layers are not segments.
    assert equal["balance_entropy"] == pytest.approx(1.0) and equal["balance_max_share"] == pytest.approx(1 / 3)
    assert equal["balance_layers"] == 3
    skewed = complexity_balance([cost(9_900), cost(50), cost(50, "linear")])
    # One layer holding 99% of the MACs: entropy far below 1, max share 0.99.
    assert skewed["balance_entropy"] < 0.1 and skewed["balance_max_share"] == pytest.approx(0.99)
    single = complexity_balance([cost(640, "linear")])
    # A curve of one segment has nothing to balance: H = 1 by definition (not 0/0).
    assert single == {"balance_entropy": 1.0, "balance_max_share": 1.0, "balance_layers": 1.0}


def test_balance_of_a_real_architecture_follows_its_layer_costs(x_val):
    arch = CNNArchitecture((4, 32), (3, 3), "relu", True, "stride", 1, "global_pool")
    costs = layer_costs(arch, SHAPE, CLASSES)
    macs = [c.macs for c in costs if c.kind in ("conv", "linear")]
    metrics = diagnosed(arch, x_val)
    # The largest share is the costliest conv/linear layer's MACs over E_comp.
    assert metrics["balance_max_share"] == pytest.approx(max(macs) / sum(macs))
    assert metrics["balance_layers"] == len(macs) == 3


def test_diagnose_is_deterministic_and_touches_neither_global_rng_nor_mode_nor_gradients(x_val):
    arch = ResNetArchitecture(8, (2,), (8,), 3, "relu", "post")
    model = build_model(arch, SHAPE, CLASSES, generator=torch.Generator().manual_seed(1)).train()
    costs = layer_costs(arch, SHAPE, CLASSES)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    first = diagnose(model, arch, x_val, costs, seed=3)
    second = diagnose(model, arch, x_val, costs, seed=3)
    # Same model, same seed: the same numbers (samples, arc and projections are seeded).
    assert first == second
    # Another seed draws another arc: the trajectory lengths change.
    assert diagnose(model, arch, x_val, costs, seed=4)["traj_length_l0"] != first["traj_length_l0"]
    # The global RNGs are untouched, training mode is restored, no gradient was accumulated.
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert model.training and all(p.grad is None for p in model.parameters())
    # Every value is a finite float: nothing NaN goes to MLflow.
    assert all(isinstance(v, float) and math.isfinite(v) for v in first.values())


def test_diagnosing_the_fresh_model_does_not_change_its_training():
    # The worker diagnoses the freshly built model, then trains it: the training must be the one it would
    # have been without diagnostics (same weights, same numbers), or diagnostics would change the search.
    from nas.config import DataConfig
    from nas.data import load_dataset
    from workers import TrainConfig, fit, seeded_model

    data = load_dataset(DataConfig("digits"), seed=0).without_test()
    arch = CNNArchitecture((8,), (3,), "relu", True, "stride", 1, "global_pool")
    cfg = TrainConfig(max_epochs=2)
    plain_result, plain_model = fit(seeded_model(arch, data, 7), data, cfg, seed=7)
    model = seeded_model(arch, data, 7)
    diagnose(model, arch, data.x_val, layer_costs(arch, data.input_shape, data.num_classes), seed=7)
    result, trained = fit(model, data, cfg, seed=7)
    assert (result.val_loss, result.epochs) == (plain_result.val_loss, plain_result.epochs)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), plain_model.state_dict().values()))


def test_trajectory_length_of_the_input_arc_and_of_a_linear_net(x_val):
    arch = CNNArchitecture.linear()
    model = build_model(arch, SHAPE, CLASSES, generator=torch.Generator().manual_seed(0))
    metrics = diagnose(model, arch, x_val, layer_costs(arch, SHAPE, CLASSES), seed=5, points=64)
    # Recompute the arc exactly as diagnose draws it (np.random.default_rng(seed): a permutation, then the arc).
    rng = np.random.default_rng(5)
    rng.permutation(len(x_val))
    arc = input_arc(x_val, 64, rng)
    steps = np.linalg.norm(np.diff(arc.reshape(64, -1), axis=0), axis=1)
    # L_0 is the length of the input arc itself: Σ ||x(t_{i+1}) - x(t_i)||.
    assert metrics["traj_length_l0"] == pytest.approx(steps.sum(), rel=1e-5)
    # The arc starts and ends at real validation samples.
    assert any(np.allclose(arc[0], x) for x in x_val) and any(np.allclose(arc[-1], x) for x in x_val)
    # Through flatten + linear (logistic regression) the arc's image is W·x(t): its length is that of W·Δx.
    weight = model.head[1].weight.detach().numpy()
    image = np.diff(arc.reshape(64, -1), axis=0) @ weight.T
    assert metrics["traj_length_head"] == pytest.approx(np.linalg.norm(image, axis=1).sum(), rel=1e-4)
    # No segments: no per-segment growth and no mean growth.
    assert "traj_growth_mean" not in metrics and "traj_length_l1" not in metrics


def test_sigmoid_collapses_trajectories_and_jacobian_while_relu_and_critical_tanh_keep_them(x_val):
    depth = 8
    relu = diagnosed(plain("relu", depth), x_val)
    sigmoid = diagnosed(plain("sigmoid", depth), x_val)
    tanh = diagnosed(plain("tanh_critical", depth), x_val)
    # Ordered phase (Poole et al. 2016): sigmoid + Xavier shrinks the arc by a constant factor per layer.
    assert sigmoid["traj_growth_mean"] < 0.5
    assert sigmoid[f"traj_length_l{depth}"] < 1e-3 * sigmoid["traj_length_l0"]
    # ReLU + He and tanh at critical initialization keep its length within a factor 2 per layer.
    for metrics in (relu, tanh):
        assert 0.5 < metrics["traj_growth_mean"] < 2.0
    # The Jacobian's mean squared singular value: near 1 at criticality, vanishing in the ordered phase.
    assert 0.05 < relu["jacobian_msv"] < 20 and 0.05 < tanh["jacobian_msv"] < 20
    assert sigmoid["jacobian_msv"] < 1e-4 * relu["jacobian_msv"]
    # One growth per segment, and the head's.
    assert {f"traj_growth_l{layer}" for layer in range(1, depth + 1)} | {"traj_growth_head"} <= set(relu)


def test_jacobian_estimate_matches_the_exact_jacobian():
    arch = CNNArchitecture.mlp((12,), "tanh")
    model = build_model(arch, (1, 6), 4, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.randn(5, 1, 6, generator=torch.Generator().manual_seed(1))
    exact = []
    for sample in x:
        jac = torch.autograd.functional.jacobian(lambda s: model(s[None])[0], sample).reshape(4, 6)
        exact.append(float((torch.linalg.svdvals(jac) ** 2).mean()))  # 4 singular values
    estimate = jacobian_msv(model, x, projections=400, generator=torch.Generator().manual_seed(2))
    # Hutchinson's estimate E||J^T v||² / min(m, d) converges to the mean of σ² (400 projections: ~5%).
    assert estimate == pytest.approx(np.mean(exact), rel=0.1)


def test_resnet_block_ratios_and_line_shape(x_val):
    arch = ResNetArchitecture(8, (3,), (8,), 3, "relu", "pre")  # stem width = stage width: identity shortcuts
    metrics = diagnosed(arch, x_val)
    # One ratio per block, positive, and their mean.
    ratios = [metrics[f"block_ratio_{k}"] for k in range(3)]
    assert all(r > 0 for r in ratios) and metrics["block_ratio_mean"] == pytest.approx(np.mean(ratios))
    # Triangle inequality: the path through the blocks is at least the chord from first input to last output.
    assert metrics["line_shape"] >= 1.0
    # Zero the last conv of every residual branch: F_k = 0, each block is exactly the identity, r_k = 0.
    model = build_model(arch, SHAPE, CLASSES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for block in model.segments[1:]:
            block.residual[-1].weight.zero_()
    zeroed = diagnose(model, arch, x_val, layer_costs(arch, SHAPE, CLASSES))
    assert all(zeroed[f"block_ratio_{k}"] == 0.0 for k in range(3))
    # A plain CNN has no blocks: no block measures at all (absent, never NaN).
    assert not any(key.startswith(("block_ratio", "line_shape")) for key in diagnosed(plain("relu", 2), x_val))


def test_projection_blocks_get_ratios_but_break_the_line(x_val):
    # Stage 0 changes width (projection), stage 1 downsamples (projection): each stage has one identity block.
    arch = ResNetArchitecture(8, (2, 2), (16, 32), 3, "relu", "post")
    metrics = diagnosed(arch, x_val)
    # Four blocks, four ratios.
    assert sorted(k for k in metrics if k.startswith("block_ratio_") and k != "block_ratio_mean") == [
        f"block_ratio_{k}" for k in range(4)]
    # No run of two identity-shortcut blocks: a straight line cannot be measured across a projection.
    assert "line_shape" not in metrics


def test_diagnose_refuses_what_it_cannot_measure(x_val):
    arch = plain("relu", 1)
    costs = layer_costs(arch, SHAPE, CLASSES)
    # A module that is not a SegmentedNet has no segments to walk.
    with pytest.raises(TypeError, match="SegmentedNet"):
        diagnose(torch.nn.Linear(64, 10), arch, x_val, costs)
    # No validation inputs: nothing to measure on.
    model = build_model(arch, SHAPE, CLASSES)
    with pytest.raises(ValueError, match="empty"):
        diagnose(model, arch, x_val[:0], costs)


def test_diagnostics_figure_shows_layers_and_blocks(x_val):
    arch = ResNetArchitecture(8, (2,), (8,), 3, "relu", "pre")
    init = diagnosed(arch, x_val, seed=0)
    later = diagnosed(arch, x_val, seed=1)
    figure = diagnostics_figure(init, later, "resnet")
    left, right = figure.axes
    # Left: one line per phase over input, 3 segments (stem + 2 blocks) and head; right: one bar per block each.
    assert len(left.lines) == 2 and len(left.lines[0].get_xdata()) == 5
    assert len(right.patches) == 4
    plain_figure = diagnostics_figure(diagnosed(plain("relu", 2), x_val), {}, "plain")
    # Without blocks the right panel lists the scalar diagnostics instead.
    assert "jacobian_msv" in plain_figure.axes[1].texts[0].get_text()
