"""Figures of a search: the front (validation error vs MACs) and a candidate's complexity profile."""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on workers, servers or CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nas.energy import FrontPoint  # noqa: E402

__all__ = ["front_figure", "profile_png", "diagnostics_png", "hypervolume_figure"]


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
    image.save(buffer, format="PNG", compress_level=1)  # fast zlib: one per trial; a few KB more
    return buffer.getvalue()


def _font(size: int = 11) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _grouped_bars(draw: Any, origin: tuple[int, int], size: tuple[int, int], labels: Sequence[str],
                  series: Sequence[Sequence[float]], colors: Sequence[tuple[int, int, int]], title: str,
                  log: bool) -> None:
    """Bars of several series per label inside the box at `origin` of `size` (log10 scale if `log`)."""
    font = _font(11)
    x0, y0 = origin
    width, height = size
    draw.text((x0, y0), title, fill="black", font=font)
    top, bottom = y0 + 20, y0 + height - 24
    values = [v for s in series for v in s if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not labels or not values:
        draw.text((x0, top + 10), "not applicable", fill="gray", font=font)
        return
    transform = (lambda v: math.log10(v)) if log else (lambda v: v)
    low = min(0.0, min(transform(v) for v in values))
    high = max(transform(v) for v in values)
    span = (high - low) or 1.0
    left = x0 + 46
    draw.line([(left - 2, top), (left - 2, bottom), (x0 + width, bottom)], fill="black")
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * span
        text = f"1e{value:.1f}" if log else f"{value:.3g}"
        draw.text((x0, bottom - fraction * (bottom - top) - 6), text, fill="black", font=font)
    group = (x0 + width - left) / len(labels)
    bar = max(2.0, group * 0.8 / len(series))
    for i, label in enumerate(labels):
        for j, values_j in enumerate(series):
            value = values_j[i] if i < len(values_j) else None
            if value is None or not math.isfinite(value) or (log and value <= 0):
                continue
            x = left + i * group + j * bar
            y = bottom - (transform(value) - low) / span * (bottom - top)
            draw.rectangle([x, y, x + bar - 1, bottom], fill=colors[j])
        draw.text((left + i * group, bottom + 4), label[:6], fill="black", font=font)


def diagnostics_png(init: dict[str, float], trained: dict[str, float], title: str = "") -> bytes:
    """The geometry of a trial's curve as a PNG drawn with Pillow (one per trained trial, so it must be cheap):
    trajectory length after each layer (log scale) and the ResNet block ratios r_k, at init and trained,
    with the scalar diagnostics listed."""
    import io

    from PIL import Image, ImageDraw

    from nas.diagnostic_plots import block_ratios, trajectory_profile

    colors = [(31, 119, 180), (214, 39, 40)]
    image = Image.new("RGB", (900, 330), "white")
    draw = ImageDraw.Draw(image)
    font = _font(12)
    draw.text((10, 6), f"{title[:120]}  (blue: init, red: trained)", fill="black", font=font)
    labels, init_lengths = trajectory_profile(init)
    trained_labels, trained_lengths = trajectory_profile(trained)
    labels = labels if len(labels) >= len(trained_labels) else trained_labels
    _grouped_bars(draw, (10, 30), (430, 220), labels, [init_lengths, trained_lengths], colors,
                  "trajectory length after each layer", log=True)
    init_blocks, trained_blocks = block_ratios(init), block_ratios(trained)
    blocks = [str(k) for k in range(max(len(init_blocks), len(trained_blocks)))]
    _grouped_bars(draw, (470, 30), (420, 220), blocks, [init_blocks, trained_blocks], colors,
                  "block ratio r_k = |F_k(x)| / |x|", log=False)
    keys = ("balance_entropy", "balance_max_share", "traj_growth_mean", "line_shape", "jacobian_msv")
    line = "   ".join(f"{k}: {init.get(k, math.nan):.3g} -> {trained.get(k, math.nan):.3g}" for k in keys
                      if k in init or k in trained)
    draw.text((10, 290), line, fill="black", font=_font(11))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
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
