"""The per-trial PNGs (complexity profile, diagnostics): decodable, drawn where and in the colours they say."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from nas.plots import BLACK, BLUE, GRAY, RED, WHITE, _canvas, _font, _text, diagnostics_png, profile_png

INIT = {"traj_length_l0": 1.0, "traj_length_l1": 2.0, "traj_length_l2": 4.0, "traj_length_head": 3.0,
        "balance_entropy": 0.5, "line_shape": 0.3, "jacobian_msv": 1.2}


def _open(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _colours(image: Image.Image, box: tuple[int, int, int, int] | None = None) -> dict[int, int]:
    region = image.crop(box) if box else image
    return {index: count for count, index in region.getcolors()}


def test_text_set_from_cached_glyphs_lands_where_imagedraw_would_draw_it() -> None:
    for text, xy in (("trajectory length after each layer", (10, 30)), ("1e0.3", (4.4, 93.6)), ("init, red", (0, 0))):
        direct = Image.new("1", (300, 120), 0)
        ImageDraw.Draw(direct).text((round(xy[0]), round(xy[1])), text, fill=1, font=_font(11))
        pasted = _canvas(300, 120)
        _text(pasted, xy, text)
        ink = Image.frombytes("L", pasted.size, bytes(255 if v == BLACK else 0 for v in pasted.tobytes()))
        # Same box within a pixel or two (glyphs are set without kerning), about the same ink, nothing else drawn.
        want, got = direct.getbbox(), ink.getbbox()
        assert want and got and all(abs(a - b) <= 2 for a, b in zip(want, got)), (text, want, got)
        want_ink, got_ink = direct.convert("L").tobytes().count(255), ink.tobytes().count(255)
        assert abs(got_ink - want_ink) <= 0.1 * want_ink, (text, want_ink, got_ink)
        assert set(pasted.tobytes()) == {WHITE, BLACK}
    blank = _canvas(20, 20)
    _text(blank, (0, 0), " ")  # nothing to draw: no error, nothing drawn
    assert _colours(blank) == {WHITE: 400}


def test_profile_png_has_a_bar_per_layer_in_proportion_and_labels() -> None:
    image = _open(profile_png(["features.0.conv", "features.1.conv", "head.linear"], [10_000, 40_000, 640],
                              "trial 3: cnn [8,16] k3 relu"))
    assert image.format == "PNG" and image.mode == "P" and image.size == (360, 298)
    # Bars sit on the axis at y = 208; their heights follow the MACs (the tallest is 180 px).
    heights = []
    for i in range(3):
        x = 70 + i * (34 + 12) + 17
        column = [image.getpixel((x, y)) for y in range(28, 208)]
        heights.append(sum(1 for v in column if v == BLUE))
    assert heights[1] >= 179 and abs(heights[0] - 45) <= 1 and heights[2] <= 3
    assert _colours(image, (0, 0, 360, 20)).get(BLACK, 0) > 50  # the title
    assert _colours(image, (0, 212, 360, 298)).get(BLACK, 0) > 100  # the turned layer names


def test_diagnostics_png_shows_init_and_trained_bars_and_says_when_a_panel_does_not_apply() -> None:
    trained = {k: v * 1.5 for k, v in INIT.items()}
    image = _open(diagnostics_png(INIT, trained, "trial 7: cnn [8,16] k3 relu"))
    assert image.mode == "P" and image.size == (900, 330)
    left, right = _colours(image, (10, 50, 440, 260)), _colours(image, (470, 50, 890, 260))
    assert left.get(BLUE, 0) > 1000 and left.get(RED, 0) > 1000  # trajectory lengths, init and trained
    assert BLUE not in right and RED not in right and right.get(GRAY, 0) > 20  # a CNN has no blocks
    assert _colours(image, (0, 280, 900, 310)).get(BLACK, 0) > 200  # the scalar line
    with_blocks = {**INIT, "block_ratio_0": 0.5, "block_ratio_1": 0.9}
    image = _open(diagnostics_png(with_blocks, with_blocks))
    right = _colours(image, (470, 50, 890, 260))
    assert right.get(BLUE, 0) > 1000 and right.get(RED, 0) > 1000
