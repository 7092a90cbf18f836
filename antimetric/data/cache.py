"""Resized copies of a dataset's images, written once by `prepare --cache-size`, read by training.

Decoding a full-size JPEG and shrinking it is most of what the input pipeline costs
(`benchmarks/loader.py`). The cache stores every image after the deterministic first step of the
transforms (the box crop for `cropped`, then `resize_transform`), as a JPEG of quality 95, so an
epoch decodes a small file and the random crop and flip still happen per epoch. The only change
to what the network sees is JPEG's rounding of the resized pixels.

A cache folder counts only once its index file is written, last, and only for the records it was
written for: a re-prepared manifest with other images or boxes makes it stale, and training then
reads the original files again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from antimetric.atomic import write_json
from antimetric.data.records import ImageRecord
from antimetric.data.transforms import resize_transform

CACHE_FOLDER = "antimetric-cache"
CACHE_FORMAT = 1
JPEG_QUALITY = 95
_INDEX_NAME = "cache.json"


@dataclass(frozen=True)
class CacheForm:
    """Which images a cache holds: those `crop_type` at `image_size` reads."""

    crop_type: str  # 'uncropped': short side resized to image_size; 'cropped': box, then image_size square
    image_size: int

    def folder(self, dataset_dir: Path) -> Path:
        return Path(dataset_dir) / CACHE_FOLDER / f"{self.crop_type}-{self.image_size}"


def resized_for_cache(image: Image.Image, record: ImageRecord, form: CacheForm) -> Image.Image:
    """What the transforms' first step makes of a decoded image (the dataset's box crop included)."""
    if form.crop_type == "cropped" and record.box is not None:
        image = image.crop(record.box)
    return resize_transform(form.crop_type, form.image_size)(image)


def save_cached(image: Image.Image, record: ImageRecord, folder: Path) -> None:
    """Write one cached image under the record's own relative path (its content is always JPEG).

    Raises OSError when the file cannot be written."""
    path = folder / record.path
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: colour kept at full resolution


def start_cache(folder: Path) -> None:
    """Invalidate an earlier cache in `folder` before its files are overwritten."""
    (folder / _INDEX_NAME).unlink(missing_ok=True)


def finish_cache(folder: Path, dataset: str, form: CacheForm, records: list[ImageRecord]) -> None:
    """Mark `folder` complete for exactly `records` (the readable ones, all written)."""
    write_json(folder / _INDEX_NAME, {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "crop_type": form.crop_type,
        "image_size": form.image_size,
        "jpeg_quality": JPEG_QUALITY,
        "images": len(records),
        "records": records_fingerprint(records),
    })


def find_cache(dataset_dir: Path, dataset: str, form: CacheForm, records: list[ImageRecord]) -> Path | None:
    """The cache folder of `form` when it was completed for these very records, else None."""
    folder = form.folder(dataset_dir)
    try:
        index = json.loads((folder / _INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    expected = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "crop_type": form.crop_type,
        "image_size": form.image_size,
        "records": records_fingerprint(records),
    }
    if not isinstance(index, dict) or any(index.get(key) != value for key, value in expected.items()):
        return None
    return folder


def records_fingerprint(records: list[ImageRecord]) -> str:
    """A digest of what decides the cached pixels: each image's path and box, order-independent."""
    rows = sorted(f"{r.path}\t{list(r.box) if r.box is not None else None}" for r in records)
    return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()
