"""Geometry diagnostics of one network, at initialization or trained. Pure torch: no Ray, MLflow or nas.

Four measures of the network as a curve of segments (docs/DIAGNOSTICS.md has the formulas and sources):

* complexity balance of the curve: the shares p_l = MACs_l / E_comp of the conv and linear layers, their
  normalized entropy H = -Σ p_l log p_l / log L (1 = balanced) and the largest share;
* trajectory length (Raghu et al. 2017): a circular arc of inputs between two validation samples, its
  length after the input, after each segment and after the head, and the growth between them;
* ResNet blocks as near-identity segments I + F_k: the ratio r_k = E||F_k(x_k)|| / ||x_k|| per block
  (Jastrzebski et al. 2018) and the line-shape score Σ||x_{k+1} - x_k|| / ||x_end - x_start|| over runs
  of identity-shortcut blocks (Gai & Zhang 2021);
* signal propagation: the mean squared singular value of the input-output Jacobian, estimated with
  random projections (Hutchinson), a cheap proxy of criticality (Poole et al. 2016).

`diagnose` runs them all in eval mode, without gradients except for the Jacobian estimate, from seeded
generators only (the global RNGs are not touched), and restores the model's training mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from search_spaces import Architecture, LayerCost, ResidualBlock

__all__ = [
    "diagnose",
    "complexity_balance",
    "input_arc",
    "trajectory_lengths",
    "block_geometry",
    "jacobian_msv",
    "TRAJECTORY_POINTS",
    "BLOCK_SAMPLES",
    "JACOBIAN_SAMPLES",
    "JACOBIAN_PROJECTIONS",
]

TRAJECTORY_POINTS = 256
"""Points on the input arc (Raghu et al. use a few hundred to a thousand)."""
BLOCK_SAMPLES = 256
"""Validation samples whose block ratios and line shapes are averaged."""
JACOBIAN_SAMPLES = 64
"""Validation samples at which the Jacobian is estimated."""
JACOBIAN_PROJECTIONS = 4
"""Random projections per sample: each costs one backward pass over the batch."""

_EPS = 1e-12


def complexity_balance(costs: Sequence[LayerCost]) -> dict[str, float]:
    """How evenly the curve's length (MACs) is spread over its conv and linear layers.

    Args:
        costs: The layer costs of the network (``layer_costs``); norm and pool layers (0 MACs) are
            not segments of the curve and are ignored.

    Returns:
        ``balance_entropy``: H = -Σ p_l log p_l / log L over the L conv and linear layers, with
        p_l = MACs_l / Σ MACs; 1 when every layer costs the same, towards 0 when one layer holds all.
        A curve of one segment (L = 1) has nothing to balance: H = 1 by definition.
        ``balance_max_share``: max_l p_l. ``balance_layers``: L.
    """
    macs = [cost.macs for cost in costs if cost.kind in ("conv", "linear")]
    total = sum(macs)
    if not macs or total <= 0:
        return {}
    shares = [m / total for m in macs]
    layers = len(shares)
    entropy = -sum(p * math.log(p) for p in shares if p > 0)
    normalized = entropy / math.log(layers) if layers > 1 else 1.0
    return {"balance_entropy": normalized, "balance_max_share": max(shares), "balance_layers": float(layers)}


def input_arc(x: np.ndarray, points: int, rng: np.random.Generator) -> np.ndarray:
    """A circular arc between two distinct samples of `x` drawn from `rng` (Raghu et al. 2017, §2.2).

    x(t) = cos(πt/2)·x_a + sin(πt/2)·x_b for ``points`` values of t evenly spaced in [0, 1]: it starts
    at x_a, ends at x_b and stays in the span of real inputs.

    Returns:
        An array shaped ``(points, *x.shape[1:])`` of the dtype of `x`.

    Raises:
        ValueError: If `x` holds fewer than two samples or `points` < 2.
    """
    if len(x) < 2 or points < 2:
        raise ValueError(f"an arc needs two samples and two points, but got {len(x)} samples, {points} points")
    a, b = rng.choice(len(x), size=2, replace=False)
    theta = np.linspace(0.0, math.pi / 2, points).reshape(-1, *([1] * (x.ndim - 1)))
    return (np.cos(theta) * x[a] + np.sin(theta) * x[b]).astype(x.dtype)


def _path_length(h: torch.Tensor) -> float:
    flat = h.reshape(len(h), -1).double()
    return float(torch.linalg.vector_norm(flat[1:] - flat[:-1], dim=1).sum())


@torch.no_grad()
def trajectory_lengths(model: nn.Module, arc: torch.Tensor) -> dict[str, float]:
    """Length of the arc's image after each segment of a SegmentedNet (call in eval mode).

    L_l = Σ_i ||h_l(t_{i+1}) - h_l(t_i)|| with h_0 the input, h_1..h_S the segments' outputs and the
    head's output (logits) last.

    Returns:
        ``traj_length_l{l}`` for l = 0..S, ``traj_length_head``; ``traj_growth_l{l}`` = L_l / L_{l-1}
        for l = 1..S and ``traj_growth_head`` = L_head / L_S where the denominator is positive; and
        ``traj_growth_mean`` = (L_S / L_0)^(1/S), the geometric mean growth per segment (S >= 1).
    """
    lengths = [_path_length(arc)]
    h = arc
    for segment in model.segments:
        h = segment(h)
        lengths.append(_path_length(h))
    head = _path_length(model.head(h))
    metrics = {f"traj_length_l{layer}": length for layer, length in enumerate(lengths)}
    metrics["traj_length_head"] = head
    for layer in range(1, len(lengths)):
        if lengths[layer - 1] > 0:
            metrics[f"traj_growth_l{layer}"] = lengths[layer] / lengths[layer - 1]
    if lengths[-1] > 0:
        metrics["traj_growth_head"] = head / lengths[-1]
    segments = len(lengths) - 1
    if segments >= 1 and lengths[0] > 0:
        metrics["traj_growth_mean"] = (lengths[-1] / lengths[0]) ** (1.0 / segments)
    return metrics


def _norms(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(h.reshape(len(h), -1).double(), dim=1)


@torch.no_grad()
def block_geometry(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Near-identity measures of the residual blocks of a SegmentedNet on a batch (call in eval mode).

    Returns:
        ``block_ratio_{k}`` = mean_i ||F_k(x_k,i)|| / ||x_k,i|| for the k-th residual block (0-based,
        F_k its residual branch, x_k its input); ``block_ratio_mean`` over blocks; and ``line_shape``:
        for every run of two or more consecutive blocks with identity shortcuts (same shape in and
        out), Σ_i Σ_k ||x_{k+1,i} - x_{k,i}|| / Σ_i ||x_end,i - x_start,i|| (1 = the blocks move the
        representation along a straight line), averaged over runs. Empty for a net without blocks.
    """
    ratios: list[float] = []
    shapes: list[float] = []
    run = _Run()
    h = x
    for segment in model.segments:
        if not isinstance(segment, ResidualBlock):
            shapes.extend(run.close())
            h = segment(h)
            continue
        captured: list[torch.Tensor] = []
        handle = segment.residual.register_forward_hook(lambda _m, _a, out: captured.append(out))
        try:
            out = segment(h)
        finally:
            handle.remove()
        ratios.append(float((_norms(captured[0]) / _norms(h).clamp_min(_EPS)).mean()))
        if isinstance(segment.shortcut, nn.Identity) and out.shape == h.shape:
            run.step(h, out)
        else:
            # a projection changes the space: a straight line cannot be measured across it
            shapes.extend(run.close())
        h = out
    shapes.extend(run.close())
    metrics = {f"block_ratio_{k}": ratio for k, ratio in enumerate(ratios)}
    if ratios:
        metrics["block_ratio_mean"] = float(np.mean(ratios))
    if shapes:
        metrics["line_shape"] = float(np.mean(shapes))
    return metrics


class _Run:
    """A run of consecutive identity-shortcut blocks: its start and the lengths of its steps."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.start: torch.Tensor | None = None
        self.end: torch.Tensor | None = None
        self.path = torch.zeros((), dtype=torch.float64)
        self.blocks = 0

    def step(self, before: torch.Tensor, after: torch.Tensor) -> None:
        if self.start is None:
            self.start = before
        self.path = self.path + _norms(after - before).sum()
        self.end = after
        self.blocks += 1

    def close(self) -> list[float]:
        """The run's line-shape score if it has two blocks or more (one block is a straight line)."""
        score: list[float] = []
        if self.blocks >= 2 and self.start is not None and self.end is not None:
            chord = _norms(self.end - self.start).sum()
            score.append(float(self.path / chord.clamp_min(_EPS)))
        self._reset()
        return score


def jacobian_msv(model: nn.Module, x: torch.Tensor, projections: int, generator: torch.Generator) -> float:
    """Mean squared singular value of the input-output Jacobian J_i = ∂f(x_i)/∂x_i, averaged over a batch.

    Hutchinson's estimate: for v ~ N(0, I_m), E||J^T v||² = tr(J J^T) = Σ σ²; one backward pass of
    Σ_i v_i·f(x_i) gives J_i^T v_i for every sample at once (samples do not interact in eval mode).
    The mean squared singular value is Σ σ² / min(m, d) for J of shape m x d (outputs x inputs).
    Around 1 a deep net propagates signals and gradients (criticality); ≪ 1 they vanish (ordered
    phase, e.g. sigmoid with Xavier initialization), ≫ 1 they explode (chaotic phase).

    Args:
        model: the network, in eval mode.
        x: a batch of inputs.
        projections: random projections per sample.
        generator: a CPU generator for the projections.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        outputs, inputs = out.shape[1], x[0].numel()
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for index in range(projections):
            v = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=v, retain_graph=index < projections - 1)
            total = total + grad.reshape(len(x), -1).double().pow(2).sum()
    return float(total) / (projections * len(x) * min(outputs, inputs))


def diagnose(
    model: nn.Module,
    arch: Architecture,
    x_val: np.ndarray,
    costs: list[LayerCost],
    *,
    seed: int = 0,
    points: int = TRAJECTORY_POINTS,
    block_samples: int = BLOCK_SAMPLES,
    jacobian_samples: int = JACOBIAN_SAMPLES,
    projections: int = JACOBIAN_PROJECTIONS,
) -> dict[str, float]:
    """Every geometry diagnostic of a built (fresh or trained) network, as flat metrics.

    Called twice per trial: on the freshly initialized model and on the trained one; the caller adds
    the phase prefix (``init.`` / ``trained.``). Deterministic for a given seed: the samples, the arc
    and the projections come from seeded generators, the global RNGs are untouched. The model runs in
    eval mode (batch norm uses its running statistics, which at initialization make it the identity)
    and is put back in the mode it had.

    Args:
        model: a SegmentedNet (``build_model``): ``.segments`` and ``.head``; on any device.
        arch: the architecture it was built from (named in errors).
        x_val: validation inputs, (N, C, L) or (N, C, H, W).
        costs: ``layer_costs(arch, input_shape, num_classes)``.
        seed: seeds the choice of samples, the arc's endpoints and the projections.
        points, block_samples, jacobian_samples, projections: sizes of the estimates.

    Returns:
        ``balance_entropy``, ``balance_max_share``, ``balance_layers``; ``traj_length_l{l}``,
        ``traj_length_head``, ``traj_growth_l{l}``, ``traj_growth_head``, ``traj_growth_mean``
        (needs two samples); ``block_ratio_{k}``, ``block_ratio_mean``, ``line_shape`` (ResNets);
        ``jacobian_msv``. A measure that does not apply (or overflowed) is left out, never NaN or inf.

    Raises:
        TypeError: if `model` has no ``segments`` and ``head`` (not a SegmentedNet).
        ValueError: if `x_val` is empty.
    """
    if not (hasattr(model, "segments") and hasattr(model, "head")):
        raise TypeError(f"diagnose needs a SegmentedNet (build_model of {arch.summary()}), "
                        f"but got {type(model).__name__}")
    if len(x_val) == 0:
        raise ValueError(f"diagnose needs validation inputs, but got an empty array for {arch.summary()}")
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    order = rng.permutation(len(x_val))

    def batch(size: int) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x_val[np.sort(order[:size])]), dtype=torch.float32,
                               device=device)

    metrics = complexity_balance(costs)
    was_training = model.training
    model.eval()
    try:
        if len(x_val) >= 2:
            arc = torch.as_tensor(input_arc(x_val, points, rng), dtype=torch.float32, device=device)
            metrics.update(trajectory_lengths(model, arc))
        metrics.update(block_geometry(model, batch(block_samples)))
        metrics["jacobian_msv"] = jacobian_msv(model, batch(jacobian_samples), projections, generator)
    finally:
        model.train(was_training)
    # An exploding (chaotic) net can overflow float32: such a value is left out rather than logged as inf.
    return {key: float(value) for key, value in metrics.items() if math.isfinite(value)}
