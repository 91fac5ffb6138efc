"""Figures of a search: the front (validation error vs MACs) and a candidate's complexity profile."""

from __future__ import annotations

import functools
import io
import math
from typing import TYPE_CHECKING, Any, Sequence

from nas.energy import FrontPoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["front_figure", "profile_png", "diagnostics_png", "hypervolume_figure"]


@functools.cache
def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display on workers, servers or CI), set once, on first use:
    the search loop imports this module for the per-trial PNGs, which are drawn elsewhere (a writer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def front_figure(points: Sequence[FrontPoint], front: Sequence[FrontPoint], title: str = "") -> Figure:
    """Every completed trial as a point, the front as a step line, front members labelled by trial number."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.5), dpi=100)
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


# The per-trial PNGs (complexity profile, diagnostics) are drawn with Pillow on a five-colour palette image:
# one is made for every trained trial, in the driver, so they must be cheap. Against RGB, a palette image
# encodes ~4x faster (1 byte per pixel instead of 3: ~1 ms instead of ~4.5 for the diagnostics figure on
# the development machine) at half the size. Text is set from cached one-bit glyphs (no anti-aliasing, no
# kerning) and whole lines are cached too: axis titles and layer labels repeat from trial to trial.
WHITE, BLACK, BLUE, RED, GRAY = range(5)
_PALETTE = [255, 255, 255, 0, 0, 0, 31, 119, 180, 214, 39, 40, 128, 128, 128]


def _canvas(width: int, height: int) -> Any:
    from PIL import Image

    image = Image.new("P", (width, height), WHITE)
    image.putpalette(_PALETTE)
    return image


@functools.lru_cache(maxsize=8)
def _font(size: int = 11) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


_PAD = 3  # pixels left of a glyph's origin that its ink may reach (the tail of a comma)


@functools.lru_cache(maxsize=512)
def _glyph(char: str, size: int) -> tuple[Any, float]:
    """One character in one-bit pixels, drawn at (_PAD, 0) as ImageDraw.text draws it, and its advance."""
    from PIL import Image, ImageDraw

    font = _font(size)
    advance = font.getlength(char)
    right, bottom = ImageDraw.Draw(Image.new("1", (1, 1))).textbbox((_PAD, 0), char, font=font)[2:]
    if right <= _PAD or bottom <= 0:
        return None, advance
    mask = Image.new("1", (right, bottom), 0)
    ImageDraw.Draw(mask).text((_PAD, 0), char, fill=1, font=font)
    return mask, advance


@functools.lru_cache(maxsize=1024)
def _text_mask(text: str, size: int) -> Any:
    """`text` in one-bit pixels, its origin at (_PAD, 0), set from cached glyphs (no kerning): drawing a fresh
    line with FreeType costs ~25 µs per character, setting it from cached glyphs a few. None if no pixels."""
    from PIL import Image

    glyphs, x = [], 0.0
    for char in text:
        mask, advance = _glyph(char, size)
        if mask is not None:
            glyphs.append((round(x), mask))
        x += advance
    if not glyphs:
        return None
    line = Image.new("1", (max(left + mask.width for left, mask in glyphs), max(m.height for _, m in glyphs)), 0)
    for left, mask in glyphs:
        line.paste(1, (left, 0), mask)
    return line


def _text(image: Any, xy: tuple[float, float], text: str, color: int = BLACK, size: int = 11) -> None:
    """Paste `text` where ImageDraw.text at `xy` would draw it (cached mask)."""
    mask = _text_mask(text, size)
    if mask is not None:
        image.paste(color, (round(xy[0]) - _PAD, round(xy[1])), mask)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast zlib: one per trial; a few KB more
    return buffer.getvalue()


def profile_png(names: Sequence[str], macs: Sequence[int], title: str = "") -> bytes:
    """The complexity profile as a PNG drawn with Pillow: a bar per conv/linear layer, labelled.

    One is made for every trial, so it must be cheap: matplotlib takes 40-90 ms of CPU per figure on the
    development machine, this a millisecond or two.
    """
    from PIL import ImageDraw

    bar_w, gap, left, top, height, label_h = 34, 12, 70, 28, 180, 90
    width = max(360, left + len(names) * (bar_w + gap) + 20)
    image = _canvas(width, top + height + label_h)
    draw = ImageDraw.Draw(image)
    _text(image, (left, 6), f"{title[:100]} (MACs per layer)")
    peak = max(macs, default=0) or 1
    draw.line([(left - 4, top), (left - 4, top + height)], fill=BLACK)
    draw.line([(left - 4, top + height), (width - 10, top + height)], fill=BLACK)
    for fraction in (0.0, 0.5, 1.0):
        y = top + height - fraction * height
        _text(image, (4, y - 6), f"{fraction * peak:,.0f}")
    for i, (name, value) in enumerate(zip(names, macs)):
        x = left + i * (bar_w + gap)
        draw.rectangle([x, top + height - value / peak * height, x + bar_w, top + height], fill=BLUE)
        mask = _text_mask(name[-18:], 11)
        if mask is not None:
            turned = mask.rotate(60, expand=True)
            image.paste(BLACK, (x + bar_w // 2 - turned.width + 6, top + height + 4), turned)
    return _png(image)


def _grouped_bars(image: Any, origin: tuple[int, int], size: tuple[int, int], labels: Sequence[str],
                  series: Sequence[Sequence[float]], colors: Sequence[int], title: str, log: bool) -> None:
    """Bars of several series per label inside the box at `origin` of `size` (log10 scale if `log`)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    x0, y0 = origin
    width, height = size
    _text(image, (x0, y0), title)
    top, bottom = y0 + 20, y0 + height - 24
    values = [v for s in series for v in s if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not labels or not values:
        _text(image, (x0, top + 10), "not applicable", GRAY)
        return
    transform = (lambda v: math.log10(v)) if log else (lambda v: v)
    low = min(0.0, min(transform(v) for v in values))
    high = max(transform(v) for v in values)
    span = (high - low) or 1.0
    left = x0 + 46
    draw.line([(left - 2, top), (left - 2, bottom), (x0 + width, bottom)], fill=BLACK)
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * span
        text = f"1e{value:.1f}" if log else f"{value:.3g}"
        _text(image, (x0, bottom - fraction * (bottom - top) - 6), text)
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
        _text(image, (left + i * group, bottom + 4), label[:6])


def diagnostics_png(init: dict[str, float], trained: dict[str, float], title: str = "") -> bytes:
    """The geometry of a trial's curve as a PNG drawn with Pillow (one per trained trial, so it must be cheap):
    trajectory length after each layer (log scale) and the ResNet block ratios r_k, at init and trained,
    with the scalar diagnostics listed."""
    from nas.diagnostic_plots import block_ratios, trajectory_profile

    colors = [BLUE, RED]
    image = _canvas(900, 330)
    _text(image, (10, 6), f"{title[:120]}  (blue: init, red: trained)", size=12)
    labels, init_lengths = trajectory_profile(init)
    trained_labels, trained_lengths = trajectory_profile(trained)
    labels = labels if len(labels) >= len(trained_labels) else trained_labels
    _grouped_bars(image, (10, 30), (430, 220), labels, [init_lengths, trained_lengths], colors,
                  "trajectory length after each layer", log=True)
    init_blocks, trained_blocks = block_ratios(init), block_ratios(trained)
    blocks = [str(k) for k in range(max(len(init_blocks), len(trained_blocks)))]
    _grouped_bars(image, (470, 30), (420, 220), blocks, [init_blocks, trained_blocks], colors,
                  "block ratio r_k = |F_k(x)| / |x|", log=False)
    keys = ("balance_entropy", "balance_max_share", "traj_growth_mean", "line_shape", "jacobian_msv")
    line = "   ".join(f"{k}: {init.get(k, math.nan):.3g} -> {trained.get(k, math.nan):.3g}" for k in keys
                      if k in init or k in trained)
    _text(image, (10, 290), line)
    return _png(image)


def hypervolume_figure(steps: Sequence[int], values: Sequence[float], title: str = "") -> Figure:
    """Hypervolume of the front after each trial."""
    fig, ax = _pyplot().subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values, marker=".", c="C2")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (share of reference box)")
    ax.set_title(title or "hypervolume history")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    _pyplot().close(fig)
