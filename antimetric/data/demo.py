"""The built-in `demo` dataset: generated on first use, in the CUB-200-2011 layout.

Each class is an ordered pair of glyphs (top, bottom) from a vocabulary of eight
left-right-symmetric shapes, so a horizontal flip keeps the class. Everything else varies
per image: background colour and texture, glyph colours, size, position, rotation and
clutter. Colour and brightness, which an untrained network picks up first, carry no class
information; retrieval needs the shapes and their order, which training has to learn.
Train and test classes are different pairs of the same glyphs, as unseen birds share
parts with seen ones.
"""
from __future__ import annotations

import colorsys
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

VERSION = "2"
N_CLASSES = 60  # classes 1-30 train, 31-60 test (first half train, as for CUB)
IMAGES_PER_CLASS = 30
SIZE = 64
_SUPERSAMPLE = 4
_SEED = 2026
_GLYPHS = ("disk", "ring", "square", "triangle", "plus", "cross", "diamond", "bars")
_VERSION_FILE = "demo-version.txt"


def ensure_demo(dataset_dir: Path) -> Path:
    """Generate the dataset into dataset_dir unless this version is already there."""
    dataset_dir = Path(dataset_dir)
    version_file = dataset_dir / _VERSION_FILE
    if version_file.is_file() and version_file.read_text().strip() == VERSION:
        return dataset_dir
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dataset_dir.parent, prefix=f".{dataset_dir.name}."))
    try:
        _write_dataset(tmp)
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        os.replace(tmp, dataset_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataset_dir


def class_pairs(rng: np.random.Generator) -> list[tuple[str, str]]:
    """N_CLASSES distinct (top, bottom) glyph pairs in a seeded order."""
    pairs = [(a, b) for a in _GLYPHS for b in _GLYPHS]
    order = rng.permutation(len(pairs))[:N_CLASSES]
    return [pairs[i] for i in order]


def _write_dataset(root: Path) -> None:
    rng = np.random.default_rng(_SEED)
    images, labels, boxes, classes = [], [], [], []
    for class_id, (top, bottom) in enumerate(class_pairs(rng), start=1):
        folder = f"{class_id:03d}.{top}_over_{bottom}"
        classes.append(f"{class_id} {folder}")
        (root / "images" / folder).mkdir(parents=True)
        for k in range(IMAGES_PER_CLASS):
            image, box = render(top, bottom, rng)
            rel = f"{folder}/{top}_over_{bottom}_{k:04d}.jpg"
            image.save(root / "images" / rel, quality=90)
            images.append(rel)
            labels.append(class_id)
            boxes.append(box)
    ids = range(1, len(images) + 1)
    _write_lines(root / "images.txt", [f"{i} {p}" for i, p in zip(ids, images)])
    _write_lines(root / "image_class_labels.txt", [f"{i} {c}" for i, c in zip(ids, labels)])
    _write_lines(root / "bounding_boxes.txt", [f"{i} {x:.1f} {y:.1f} {w:.1f} {h:.1f}" for i, (x, y, w, h) in zip(ids, boxes)])
    _write_lines(root / "classes.txt", classes)
    _write_lines(root / _VERSION_FILE, [VERSION])


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def render(top: str, bottom: str, rng: np.random.Generator) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """One SIZE x SIZE RGB image of `top` above `bottom`, and the glyphs' box (x, y, w, h)."""
    s = SIZE * _SUPERSAMPLE
    background = _background(rng, s)
    dark_glyphs = _luma(background.resize((1, 1)).getpixel((0, 0))) > 128
    canvas = ImageDraw.Draw(background)
    for _ in range(rng.integers(2, 5)):  # clutter: small blobs in random colours
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.02, 0.05) * s
        canvas.ellipse([x - r, y - r, x + r, y + r], fill=_random_colour(rng, dark=rng.random() < 0.5))
    cx = s / 2 + rng.uniform(-0.1, 0.1) * s
    gap = rng.uniform(0.34, 0.42) * s
    cy = s / 2 + rng.uniform(-0.06, 0.06) * s
    boxes = []
    for glyph, y in ((top, cy - gap / 2), (bottom, cy + gap / 2)):
        radius = rng.uniform(0.13, 0.18) * s
        x = cx + rng.uniform(-0.04, 0.04) * s
        layer = _glyph_layer(glyph, s, x, y, radius, rng.uniform(-20, 20))
        background.paste(_random_colour(rng, dark=dark_glyphs), (0, 0), layer)
        boxes.append((x - radius, y - radius, x + radius, y + radius))
    image = background.resize((SIZE, SIZE), Image.BILINEAR)
    noise = rng.normal(0, 6, (SIZE, SIZE, 3))
    image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
    left, upper = min(b[0] for b in boxes) / _SUPERSAMPLE, min(b[1] for b in boxes) / _SUPERSAMPLE
    right, lower = max(b[2] for b in boxes) / _SUPERSAMPLE, max(b[3] for b in boxes) / _SUPERSAMPLE
    left, upper = max(left, 0.0), max(upper, 0.0)
    right, lower = min(right, SIZE - 1.0), min(lower, SIZE - 1.0)
    return image, (left, upper, right - left, lower - upper)


def _background(rng: np.random.Generator, s: int) -> Image.Image:
    """A random colour with a smooth random texture."""
    base = np.array(_random_colour(rng, dark=rng.random() < 0.5), dtype=np.float64)
    coarse = rng.normal(0, 28, (6, 6, 3))
    texture = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize((s, s), Image.BICUBIC))
    pixels = np.clip(base + texture.astype(np.float64) - 128, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _random_colour(rng: np.random.Generator, dark: bool) -> tuple[int, int, int]:
    value = rng.uniform(0.1, 0.4) if dark else rng.uniform(0.7, 1.0)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.9), value)
    return int(r * 255), int(g * 255), int(b * 255)


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _glyph_layer(glyph: str, s: int, x: float, y: float, r: float, angle: float) -> Image.Image:
    """A mask (mode L) with the glyph drawn white at (x, y), radius r, rotated by angle degrees."""
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    w = r * 0.35  # stroke width
    rot = math.radians(angle)

    def pts(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, si = math.cos(rot), math.sin(rot)
        return [(x + px * c - py * si, y + px * si + py * c) for px, py in points]

    def bar(x0: float, y0: float, x1: float, y1: float) -> None:
        draw.polygon(pts([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]), fill=255)

    if glyph == "disk":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    elif glyph == "ring":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        draw.ellipse([x - r + w, y - r + w, x + r - w, y + r - w], fill=0)
    elif glyph == "square":
        bar(-r * 0.85, -r * 0.85, r * 0.85, r * 0.85)
    elif glyph == "triangle":
        draw.polygon(pts([(0, -r), (r, r * 0.8), (-r, r * 0.8)]), fill=255)
    elif glyph == "plus":
        bar(-r, -w / 2, r, w / 2)
        bar(-w / 2, -r, w / 2, r)
    elif glyph == "cross":
        d = w / 2 / math.sqrt(2)
        draw.polygon(pts([(-r * 0.8 - d, -r * 0.8 + d), (-r * 0.8 + d, -r * 0.8 - d), (r * 0.8 + d, r * 0.8 - d), (r * 0.8 - d, r * 0.8 + d)]), fill=255)
        draw.polygon(pts([(r * 0.8 - d, -r * 0.8 - d), (r * 0.8 + d, -r * 0.8 + d), (-r * 0.8 + d, r * 0.8 + d), (-r * 0.8 - d, r * 0.8 - d)]), fill=255)
    elif glyph == "diamond":
        draw.polygon(pts([(0, -r), (r, 0), (0, r), (-r, 0)]), fill=255)
    elif glyph == "bars":
        for offset in (-0.7, 0.0, 0.7):
            bar(-r, offset * r - w / 3, r, offset * r + w / 3)
    else:
        raise ValueError(f"unknown glyph {glyph!r}")
    return mask
