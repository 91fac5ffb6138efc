"""Figures of a search: the front (validation error vs MACs) and a candidate's complexity profile."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on workers, servers or CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nas.energy import FrontPoint  # noqa: E402

__all__ = ["front_figure", "profile_figure", "hypervolume_figure"]


def front_figure(points: Sequence[FrontPoint], front: Sequence[FrontPoint], title: str = "") -> Figure:
    """Every completed trial as a point, the front as a step line, front members labelled by trial number."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    if points:
        ax.scatter([p.macs for p in points], [p.val_error for p in points], s=18, c="0.6", label="trials")
    if front:
        xs = [p.macs for p in front]
        ys = [p.val_error for p in front]
        ax.step(xs, ys, where="post", c="C3", lw=1.5)
        ax.scatter(xs, ys, s=36, c="C3", zorder=3, label="front")
        for p in front:
            ax.annotate(f"#{p.trial_number}", (p.macs, p.val_error), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    if points and min(p.macs for p in points) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("E_comp (MACs per sample)")
    ax.set_ylabel("validation error")
    ax.set_title(title or "minimal-complexity front")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def profile_figure(names: Sequence[str], macs: Sequence[int], title: str = "") -> Figure:
    """MACs per layer along the curve of the network (the paper's segment lengths)."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 2), 3.2), dpi=100)
    ax.bar(range(len(names)), macs, color="C0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("MACs")
    ax.set_title(title or "complexity profile", fontsize=9)
    fig.tight_layout()
    return fig


def hypervolume_figure(steps: Sequence[int], values: Sequence[float], title: str = "") -> Figure:
    """Hypervolume of the front after each trial."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values, marker=".", c="C2")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (share of reference box)")
    ax.set_title(title or "hypervolume history")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
