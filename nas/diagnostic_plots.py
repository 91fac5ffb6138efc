"""Figures of the geometry diagnostics (workers.diagnose) and of the experiments (nas.experiments)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on workers, servers or CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["diagnostics_figure", "trajectory_profile", "block_ratios", "series_figure", "bars_figure"]

_LAYER = re.compile(r"^traj_length_l(\d+)$")
_BLOCK = re.compile(r"^block_ratio_(\d+)$")


def trajectory_profile(metrics: Mapping[str, float]) -> tuple[list[str], list[float]]:
    """Labels ("input", "1", ..., "S", "head") and trajectory lengths, in the order of the curve."""
    layers = sorted((int(m.group(1)), value) for key, value in metrics.items() if (m := _LAYER.match(key)))
    labels = ["input" if layer == 0 else str(layer) for layer, _ in layers]
    values = [value for _, value in layers]
    if "traj_length_head" in metrics:
        labels.append("head")
        values.append(metrics["traj_length_head"])
    return labels, values


def block_ratios(metrics: Mapping[str, float]) -> list[float]:
    """r_k of the residual blocks in block order (empty for a net without blocks)."""
    blocks = sorted((int(m.group(1)), value) for key, value in metrics.items() if (m := _BLOCK.match(key)))
    return [value for _, value in blocks]


def _scalars(init: Mapping[str, float], trained: Mapping[str, float]) -> str:
    rows = ["", f"{'':18s}{'init':>10s}{'trained':>10s}"]
    for key in ("balance_entropy", "balance_max_share", "traj_growth_mean", "line_shape", "jacobian_msv"):
        if key in init or key in trained:
            a, b = init.get(key, math.nan), trained.get(key, math.nan)
            rows.append(f"{key:18s}{a:10.3g}{b:10.3g}")
    return "\n".join(rows)


def diagnostics_figure(init: Mapping[str, float], trained: Mapping[str, float], title: str = "") -> Figure:
    """Trajectory length per layer (init vs trained, log scale) and the ResNet block ratios r_k.

    Args:
        init: ``diagnose`` of the freshly initialized model (names without the ``init.`` prefix).
        trained: ``diagnose`` of the trained model.
        title: The figure's title, e.g. the trial number and architecture summary.

    Returns:
        A two-panel figure; the right panel lists the scalar diagnostics when the net has no blocks.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for metrics, label, color in ((init, "init", "C0"), (trained, "trained", "C3")):
        labels, values = trajectory_profile(metrics)
        if values:
            left.plot(range(len(values)), values, marker="o", ms=4, c=color, label=label)
            # at most ~12 tick labels: every k-th layer, and always the head
            step = max(1, math.ceil(len(labels) / 12))
            ticks = [i for i in range(len(labels)) if i % step == 0 or i == len(labels) - 1]
            left.set_xticks(ticks)
            left.set_xticklabels([labels[i] for i in ticks], fontsize=8)
    if any(v > 0 for v in trajectory_profile(init)[1] + trajectory_profile(trained)[1]):
        left.set_yscale("log")
    left.set_xlabel("layer (segment)")
    left.set_ylabel("trajectory length")
    left.set_title("trajectory length through the layers", fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    r_init, r_trained = block_ratios(init), block_ratios(trained)
    if r_init or r_trained:
        count = max(len(r_init), len(r_trained))
        width = 0.4
        right.bar([k - width / 2 for k in range(len(r_init))], r_init, width, color="C0", label="init")
        right.bar([k + width / 2 for k in range(len(r_trained))], r_trained, width, color="C3", label="trained")
        right.set_xticks(range(count))
        right.set_xlabel("residual block k")
        right.set_ylabel("r_k = E||F_k(x)|| / ||x||")
        right.set_title("near-identity blocks (small r_k: I + small H)", fontsize=9)
        right.legend(fontsize=8)
        right.grid(alpha=0.3, axis="y")
    else:
        right.axis("off")
        right.text(0.0, 1.0, "no residual blocks" + _scalars(init, trained), va="top", ha="left",
                   family="monospace", fontsize=8, transform=right.transAxes)
    fig.suptitle(title or "geometry diagnostics", fontsize=10)
    fig.tight_layout()
    return fig


def series_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
    logx: bool = False,
    hline: float | None = None,
    hline_label: str = "",
) -> Figure:
    """One line per series against a shared x (e.g. accuracy against depth, one line per activation)."""
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
    for index, (label, values) in enumerate(series.items()):
        points = [(a, b) for a, b in zip(x, values) if b is not None and not math.isnan(b)]
        if points:
            ax.plot([a for a, _ in points], [b for _, b in points], marker="o", c=f"C{index}", label=label)
    if hline is not None:
        ax.axhline(hline, c="0.5", ls="--", lw=1, label=hline_label or None)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(x))
        ax.set_xticklabels([str(v) for v in x])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bars_figure(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str = "",
    references: Mapping[str, Sequence[float | None]] | None = None,
) -> Figure:
    """Grouped bars (one group per condition, one bar per series), optional reference markers."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 2), 4), dpi=100)
    count = max(1, len(series))
    width = 0.8 / count
    published_labelled = False
    for index, (label, values) in enumerate(series.items()):
        offsets = [g + (index - (count - 1) / 2) * width for g in range(len(groups))]
        ax.bar(offsets, values, width, color=f"C{index}", label=label)
        for offset, value in zip(offsets, values):
            if value is not None and not math.isnan(value):
                ax.annotate(f"{100 * value:.0f}", (offset, value), ha="center", va="bottom", fontsize=7)
        if references and label in references:
            marks = [(o, r) for o, r in zip(offsets, references[label]) if r is not None]
            if marks:
                ax.scatter([o for o, _ in marks], [r for _, r in marks], marker="_", s=300, c="k", zorder=3,
                           label=None if published_labelled else "published")
                published_labelled = True
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
