"""Decoding image files into RGB, whatever mode they were stored in, within bounds on bytes and pixels.

Every decode checks the input's size in bytes, then the image's size in pixels from its header, before any
pixel is decoded: a small file cannot expand into gigabytes (a decompression bomb). A path is opened without
waiting (a FIFO would block a reader until someone writes to it) and must be a regular file.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from antimetric.errors import ConfigError

# PIL's own bound (Image.MAX_IMAGE_PIXELS by default) where it suspects a decompression bomb; PIL only warns
# up to twice that, and its global can be changed by any library, so the bound is checked here.
MAX_PIXELS = 89_478_485
MAX_BYTES = 64 * 1024 * 1024  # an encoded image; photographs are a few MB
_BOMB = f"{MAX_PIXELS:,} pixels an image may have (a decompression bomb?); resize it"

# Modes whose samples exceed 8 bits; PIL's own convert("RGB") clips them at 255 instead of scaling.
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}

# Modes that must pass through another mode first: a palette with transparency goes through RGBA so that
# PIL neither warns nor loses the palette colours of transparent entries.
_VIA_MODE = {"P": "RGBA", "PA": "RGBA"}

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def open_rgb(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Open and fully decode an image file as an RGB image.

    Decoding happens here rather than lazily, so a truncated or corrupt file raises at this call
    (OSError or ValueError from PIL; ValueError for what is not a regular file or is over the bounds).
    Grayscale, CMYK, palette, alpha and 16-bit images come back as RGB.
    """
    descriptor = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")  # callers name the path
        _check_bytes(info.st_size, max_bytes)
        file = os.fdopen(descriptor, "rb")  # owns the descriptor from here
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        return _decode(file)


def decode_rgb(data: bytes, *, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Decode an encoded image (a file's bytes) as an RGB image, as open_rgb decodes a file."""
    _check_bytes(len(data), max_bytes)
    return _decode(io.BytesIO(data))


def _check_bytes(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ValueError(f"{size:,} bytes is more than the {max_bytes:,} an image may have")


def _decode(file: BinaryIO) -> Image.Image:
    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width} x {height} is more than the {_BOMB}")
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError:  # PIL's check, at over twice its bound, comes first
        raise ValueError(f"more than the {_BOMB}") from None
    except Image.UnidentifiedImageError:  # its message names the file object, not the file
        raise Image.UnidentifiedImageError("not an image file Pillow can read") from None


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
    taken as 16-bit data and scaled from 0..65535. Floats (mode F) of at most 1 are taken as 0..1, as
    float TIFFs store them.
    """
    values = np.asarray(image, dtype=np.float64)
    peak = np.nanmax(values) if values.size and not np.isnan(values).all() else 0.0
    if peak > 255:
        values = values * (255.0 / 65535.0)
    elif image.mode == "F" and peak <= 1:
        values = values * 255.0
    gray = np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray)  # a 2-D uint8 array gives mode L


# What antimetric.load's embed, the retrieval grid and a served model take as an image: a file path, encoded file
# bytes, a PIL image, or a tensor (c, h, w) of uint8 (or other integers) 0..255 or floats 0..1, not yet normalised.
ImageInput = Union[str, Path, bytes, Image.Image, torch.Tensor]


def as_rgb(image: ImageInput) -> Image.Image:
    """An RGB PIL image from any ImageInput; files and bytes within data.images' bounds on bytes and pixels."""
    if isinstance(image, (str, Path)):
        try:
            return open_rgb(image)
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the image {image} ({_one_line(error)})") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            return decode_rgb(bytes(image))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot decode the image bytes ({_one_line(error)})") from None
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        return to_rgb(to_pil_image(_uint8_image(image.detach().cpu())))
    raise ConfigError(f"cannot embed a {type(image).__name__}: give paths, bytes, PIL images or tensors")


def _uint8_image(tensor: torch.Tensor) -> torch.Tensor:
    """An image tensor (c, h, w) as uint8: floats must be 0..1 (torchvision's convention: to_tensor gives them,
    to_pil_image reads them so) and are rounded, other integers must be 0..255. Floats are not guessed to be
    0..255 from their range: a dark image would be misread."""
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ConfigError(f"an image tensor must be (c, h, w) with 1 or 3 channels, not {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.is_floating_point():
        kind, high, fix = "a float", 1, "divide 0..255 values by 255, or give a uint8 tensor"
    elif tensor.dtype != torch.bool and not tensor.is_complex():
        kind, high, fix = "an integer", 255, "give 8-bit values"
    else:
        raise ConfigError(f"an image tensor must hold uint8, integers or floats, not {tensor.dtype}")
    low_seen, high_seen = tensor.min().item(), tensor.max().item()
    if not 0 <= low_seen <= high_seen <= high:  # False for NaN too
        raise ConfigError(f"{kind} image tensor must hold values in 0..{high}, not {low_seen:g}..{high_seen:g}; {fix}")
    return (tensor.double() * (255 / high)).round().to(torch.uint8)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
