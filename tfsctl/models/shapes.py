"""Synthetic segmentation data: coloured shapes on textured, noisy backgrounds, labelled in PASCAL VOC ids.

Each shape kind has a fixed VOC class and a base colour (jittered per shape), so both shape and colour carry the
class; backgrounds mix a random colour gradient, sinusoidal texture, stripes and pixel noise so that "not
background" cannot be learned from flatness alone. Everything derives from one ``numpy`` seed, so a data set is
reproducible from ``(seed, count, size)``; the sample model's train/eval/sample-image seeds are in its model.json.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tfsctl.voc import VOC_CLASSES

# kind -> (VOC class name, base RGB colour)
SHAPES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "disc": ("person", (220, 50, 40)),
    "square": ("car", (40, 90, 220)),
    "triangle": ("aeroplane", (240, 210, 40)),
    "ring": ("bottle", (40, 190, 70)),
    "cross": ("bicycle", (200, 60, 210)),
}
SHAPE_CLASS_IDS: dict[str, int] = {kind: VOC_CLASSES.index(name) for kind, (name, _) in SHAPES.items()}
CLASS_IDS: list[int] = [0, *sorted(SHAPE_CLASS_IDS.values())]


def _background(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    # Sinusoidal texture of random frequency and orientation.
    fx, fy = rng.uniform(0.02, 0.25, 2)
    phase = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(5, 40)
    img += (amp * np.sin(fx * xx + fy * yy + phase))[..., None] * rng.uniform(0.3, 1.0, 3)
    if rng.random() < 0.5:  # stripes or checks
        period = rng.integers(6, 24)
        stripes = ((xx // period + (yy // period) * rng.integers(0, 2)) % 2).astype(np.float32)
        img += (stripes * rng.uniform(-40, 40))[..., None]
    img += rng.normal(0, rng.uniform(3, 20), (h, w, 3))
    return img


def _shape_mask(kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, h: int, w: int,
                scale: tuple[float, float]) -> np.ndarray:
    r = rng.uniform(*scale)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    theta = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    d2 = dx * dx + dy * dy
    if kind == "disc":
        return d2 < r * r
    if kind == "ring":
        return (d2 < r * r) & (d2 > (0.55 * r) ** 2)
    if kind == "square":
        s = r * 0.8
        return (np.abs(u) < s) & (np.abs(v) < s)
    if kind == "cross":
        s, t = r, r * 0.33
        return ((np.abs(u) < s) & (np.abs(v) < t)) | ((np.abs(v) < s) & (np.abs(u) < t))
    if kind == "triangle":
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):  # three half-planes of an equilateral triangle with circumradius r
            a = theta + k * 2 * np.pi / 3
            inside &= (np.cos(a) * dx + np.sin(a) * dy) < 0.5 * r
        return inside
    raise ValueError(f"unknown shape kind {kind!r}")


def make_example(rng: np.random.Generator, height: int, width: int, *, max_shapes: int = 4,
                 scale: tuple[float, float] = (12.0, 44.0)) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image uint8 [H, W, 3], label uint8 [H, W])`` pair; later shapes occlude earlier ones."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = _background(rng, height, width, yy, xx)
    label = np.zeros((height, width), np.uint8)
    kinds = list(SHAPES)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = kinds[int(rng.integers(len(kinds)))]
        mask = _shape_mask(kind, rng, yy, xx, height, width, scale)
        base = np.array(SHAPES[kind][1], np.float32)
        colour = np.clip(base + rng.uniform(-35, 35, 3), 0, 255) * rng.uniform(0.75, 1.15)
        fill = colour + rng.normal(0, rng.uniform(2, 12), (height, width, 3))
        img[mask] = fill[mask]
        label[mask] = SHAPE_CLASS_IDS[kind]
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_dataset(seed: int, count: int, height: int, width: int, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    """``count`` examples stacked: images uint8 [count, H, W, 3], labels uint8 [count, H, W]."""
    images = np.empty((count, height, width, 3), np.uint8)
    labels = np.empty((count, height, width), np.uint8)
    for i, (img, lab) in enumerate(iter_examples(seed, count, height, width, **kwargs)):
        images[i], labels[i] = img, lab
    return images, labels


def iter_examples(seed: int, count: int, height: int, width: int,
                  **kwargs: object) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield make_example(rng, height, width, **kwargs)  # type: ignore[arg-type]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int = 21) -> np.ndarray:
    """[num_classes, num_classes] int64 counts, rows = ground truth, columns = prediction."""
    idx = labels.astype(np.int64).ravel() * num_classes + preds.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray, class_ids: list[int]) -> tuple[float, dict[int, float]]:
    """Mean IoU over ``class_ids`` (classes absent from both truth and prediction are skipped)."""
    per: dict[int, float] = {}
    for c in class_ids:
        tp = confusion[c, c]
        union = confusion[c, :].sum() + confusion[:, c].sum() - tp
        if union > 0:
            per[c] = float(tp / union)
    return (float(np.mean(list(per.values()))) if per else 0.0), per
