"""Decoding image files into RGB, whatever mode they were stored in."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# Modes whose samples exceed 8 bits; PIL's own convert("RGB") clips them at 255 instead of scaling.
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}

# Modes that must pass through another mode first: a palette with transparency goes through RGBA so that
# PIL neither warns nor loses the palette colours of transparent entries.
_VIA_MODE = {"P": "RGBA", "PA": "RGBA"}


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image file as an RGB image.

    Decoding happens here rather than lazily, so a truncated or corrupt file raises at this call
    (OSError or ValueError from PIL). Grayscale, CMYK, palette, alpha and 16-bit images come back as RGB.
    """
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to a new RGB image; alpha is dropped."""
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_gray(image).convert("RGB")
    via = _VIA_MODE.get(image.mode)
    if via is not None:
        image = image.convert(via)
    return image.convert("RGB")


def _high_depth_to_gray(image: Image.Image) -> Image.Image:
    """Scale a single-channel image of more than 8 bits to 8-bit grayscale.

    Values that already fit 0..255 are kept (PIL opens some 8-bit data as mode I); anything larger is
    taken as 16-bit data and scaled from 0..65535.
    """
    values = np.asarray(image, dtype=np.float64)
    if values.size and np.nanmax(values) > 255:
        values = values * (255.0 / 65535.0)
    gray = np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray)  # a 2-D uint8 array gives mode L
