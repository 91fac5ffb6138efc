"""Figures of a search: the front (validation error vs MACs) and a candidate's complexity profile."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on workers, servers or CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nas.energy import FrontPoint  # noqa: E402

__all__ = ["front_figure", "profile_png", "hypervolume_figure"]


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


def profile_png(names: Sequence[str], macs: Sequence[int], title: str = "") -> bytes:
    """The complexity profile as a PNG drawn with Pillow: a bar per conv/linear layer, labelled.

    One is made for every trial, so it must be cheap: matplotlib takes 40-90 ms of CPU per figure on the
    development machine, Pillow a few ms, which keeps tracking off the critical path of cheap trials.
    """
    import io

    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType: the bitmap font
        font = ImageFont.load_default()
    bar_w, gap, left, top, height, label_h = 34, 12, 70, 28, 180, 90
    width = max(360, left + len(names) * (bar_w + gap) + 20)
    image = Image.new("RGB", (width, top + height + label_h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 6), f"{title[:100]} (MACs per layer)", fill="black", font=font)
    peak = max(macs, default=0) or 1
    draw.line([(left - 4, top), (left - 4, top + height)], fill="black")
    draw.line([(left - 4, top + height), (width - 10, top + height)], fill="black")
    for fraction in (0.0, 0.5, 1.0):
        y = top + height - fraction * height
        draw.text((4, y - 6), f"{fraction * peak:,.0f}", fill="black", font=font)
    for i, (name, value) in enumerate(zip(names, macs)):
        x = left + i * (bar_w + gap)
        draw.rectangle([x, top + height - value / peak * height, x + bar_w, top + height], fill=(31, 119, 180))
        label = Image.new("RGBA", (label_h - 4, 14), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((0, 0), name[-18:], fill="black", font=font)
        rotated = label.rotate(60, expand=True)
        image.paste(rotated, (x + bar_w // 2 - rotated.width + 6, top + height + 4), rotated)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


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
