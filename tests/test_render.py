"""Rendering: every class stays distinguishable in the overlay, the legend scales with the image, raw label PNGs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from tfsctl.client.outputs import ClassNames
from tfsctl.client.render import (
    PALETTE,
    LegendLayout,
    blend,
    class_shares,
    font_size,
    legend_left,
    lifted,
    outline_mask,
    overlay,
    render_segmentation,
    save_label_png,
)
from tfsctl.errors import ClientError

BICYCLE, CAR = 2, 7


def _grid(h: int, w: int, classes: list[int]) -> np.ndarray:
    """A class map of equal vertical bands, one per class, with background around them."""
    seg = np.zeros((h, w), np.int32)
    band = w // (len(classes) + 1)
    for i, c in enumerate(classes):
        seg[h // 8 : -h // 8, band // 2 + i * band : band // 2 + (i + 1) * band - 2] = c
    return seg


def _photo(h: int, w: int) -> np.ndarray:
    """Busy, colourful content (smooth colour fields plus noise), as a photo under a mask would be."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(7 * xx + 1), np.cos(5 * yy + 2 * xx), np.sin(3 * (xx + yy))], axis=-1)
    img = 128 + 90 * base + rng.normal(0, 25, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_overlay_keeps_every_class_distinguishable():
    classes = list(range(1, 21))
    seg = _grid(120, 42 * 21, classes)
    img = _photo(*seg.shape)
    out = blend(img, seg, 0.5).astype(float)
    # Chroma (colour minus its own grey level) of every labelled pixel is the class colour's chroma at alpha,
    # whatever colours the photo has underneath: hue survives, so classes the palette tells apart by hue stay
    # apart in the overlay (mixing with the photo's colours, bicycle green over a red-brown frame read as grey).
    chroma = out - out.mean(axis=-1, keepdims=True)
    pal = PALETTE.astype(float)
    want = 0.5 * (pal - pal.mean(axis=-1, keepdims=True))
    for c in classes:
        err = np.abs(chroma[seg == c] - want[c]).max()
        assert err <= 1.0, (c, err)
    for a, b in itertools.combinations(classes, 2):
        if np.abs(want[a] - want[b]).max() > 1:  # different hue/saturation in the palette
            assert np.abs(chroma[seg == a].mean(axis=0) - chroma[seg == b].mean(axis=0)).max() > 8, (a, b)
    inner = ~outline_mask(seg, 3)
    bike, car = (out[(seg == c) & inner].mean(axis=0) for c in (BICYCLE, CAR))
    assert bike[1] - max(bike[0], bike[2]) > 40, bike  # bicycle reads green
    assert max(car) - min(car) < 2, car  # car reads grey
    # Background pixels keep the picture as it was.
    np.testing.assert_array_equal(out[seg == 0], img[seg == 0])


def test_outlines_use_the_class_colour_at_full_brightness():
    seg = _grid(60, 200, [BICYCLE, CAR])
    img = _photo(60, 200)
    out = overlay(img, seg, 0.5, outline=2)
    edge = outline_mask(seg, 2)
    assert edge.any() and not edge[seg == 0].any()
    np.testing.assert_array_equal(out[edge & (seg == BICYCLE)][0], [0, 255, 0])
    np.testing.assert_array_equal(out[edge & (seg == CAR)][0], [255, 255, 255])
    np.testing.assert_array_equal(lifted(PALETTE[[0, 15]]), [[0, 0, 0], [255, 170, 170]])


def test_legend_is_readable_on_a_1920_px_image():
    h, w = 1080, 1920
    seg = _grid(h, w, [15, BICYCLE, CAR])
    pic = np.asarray(render_segmentation(_photo(h, w), seg).convert("RGB"))
    layout = LegendLayout(font_size(seg.shape))
    assert layout.font >= 40  # 14 px was unreadable at this size
    left = legend_left(w)
    shares = class_shares(seg)
    text_rows = []
    for row, share in enumerate(shares):
        x0, y0, x1, y1 = layout.swatch_box(row, left)
        assert (pic[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] == PALETTE[share.class_id]).all(), share.name
        # The row's text: dark pixels right of the swatch, about as tall as the font.
        band = pic[y0 - layout.font // 2 : y1 + layout.font // 2, x1 + layout.pad :]
        dark = np.where((band.max(axis=-1) < 100).any(axis=1))[0]
        text_rows.append(dark.max() - dark.min() + 1 if dark.size else 0)
    assert min(text_rows) >= 0.5 * layout.font, text_rows
    assert pic.shape[1] == left + (pic.shape[1] - left) and pic.shape[0] >= h


def test_three_panels_or_overlay_only():
    seg = _grid(50, 80, [BICYCLE])
    img = _photo(50, 80)
    full = np.asarray(render_segmentation(img, seg).convert("RGB"))
    gap = max(4, 80 // 100)
    np.testing.assert_array_equal(full[:50, :80], img)
    np.testing.assert_array_equal(full[:50, 80 + gap : 160 + gap], PALETTE[seg])
    np.testing.assert_array_equal(full[:50, 160 + 2 * gap : 240 + 2 * gap], overlay(img, seg, 0.5))
    single = np.asarray(render_segmentation(img, seg, overlay_only=True).convert("RGB"))
    np.testing.assert_array_equal(single[:50, :80], overlay(img, seg, 0.5))
    assert single.shape[1] < full.shape[1] - 2 * 80


def test_label_png_and_class_names(tmp_path):
    seg = _grid(20, 30, [BICYCLE, 15])
    path = save_label_png(seg, tmp_path / "labels.png")
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), seg)
        assert im.getpalette()[3 * 15 : 3 * 16] == PALETTE[15].tolist()
    with pytest.raises(ClientError, match="does not fit a palette PNG"):
        save_label_png(np.full((2, 2), 300), tmp_path / "big.png")
    names = tmp_path / "names.txt"
    names.write_text("# ADE-style names\nwall\n\nsky\n")
    cn = ClassNames.from_file(names)
    assert [cn(i) for i in range(4)] == ["wall", "class 1", "sky", "class 3"]
    assert [s.name for s in class_shares(np.array([[0, 2, 2]]), cn)] == ["sky", "wall"]
    assert ClassNames.voc()(BICYCLE) == "bicycle"
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ClientError, match="no class names"):
        ClassNames.from_file(tmp_path / "empty.txt")
