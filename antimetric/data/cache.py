"""Resized copies of a dataset's images, written once by `prepare --cache-size`, read by training.

Decoding a full-size JPEG and shrinking it is most of what the input pipeline costs
(`benchmarks/loader.py`). The cache stores every image after the deterministic first step of the
transforms (the box crop for `cropped`, then `resize_transform`), as a JPEG of quality 95, so an
epoch decodes a small file and the random crop and flip still happen per epoch. The only change
to what the network sees is JPEG's rounding of the resized pixels.

A cache folder counts only once its index file is written, last, and only for the images it was
written from: another manifest (other images or boxes), or an original file changed since (its
size or modification time), makes it stale, and training then reads the original files again.
Each cached file is written under a temporary name and renamed, so a reader never meets a
half-written one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from antimetric.base.atomic import atomic_open, write_json
from antimetric.data.manifest.stamps import file_stamp
from antimetric.data.records import ImageRecord
from antimetric.data.transforms import resize_transform

CACHE_FOLDER = "antimetric-cache"
CACHE_FORMAT = 1  # bump when what a cached image holds changes (resize, quality, layout)
JPEG_QUALITY = 95
MAX_CACHE_SIZE = 4096  # pixels; larger inputs are not what a cache of shrunk images is for
_JPEG_MAX_SIDE = 65500
_INDEX_NAME = "cache.json"


@dataclass(frozen=True)
class CacheForm:
    """Which images a cache holds: those `crop_type` at `image_size` reads."""

    crop_type: str  # 'uncropped': short side resized to image_size; 'cropped': box, then image_size square
    image_size: int

    def folder(self, dataset_dir: Path) -> Path:
        return Path(dataset_dir) / CACHE_FOLDER / f"{self.crop_type}-{self.image_size}"


def resized_for_cache(image: Image.Image, record: ImageRecord, form: CacheForm) -> Image.Image:
    """What the transforms' first step makes of a decoded image (the dataset's box crop included).

    Raises ValueError for a box PIL cannot crop, or a result JPEG cannot hold."""
    if form.crop_type == "cropped" and record.box is not None:
        image = image.crop(record.box)  # PIL rounds the box; an inverted one raises ValueError
        if min(image.size) == 0:
            raise ValueError(f"bounding box {record.box} holds no pixel")
    resized = resize_transform(form.crop_type, form.image_size)(image)
    if max(resized.size) > _JPEG_MAX_SIDE:
        raise ValueError(f"resized to {resized.size[0]} x {resized.size[1]}, over JPEG's {_JPEG_MAX_SIDE} pixels")
    return resized


def save_cached(image: Image.Image, record: ImageRecord, folder: Path) -> None:
    """Write one cached image under the record's own relative path (its content is always JPEG),
    through a temporary file, so that the path holds either the old file or the whole new one.

    Raises OSError when the file cannot be written, ValueError when its path would lead outside `folder`."""
    with atomic_open(cached_path(folder, record), "wb") as handle:
        image.save(handle, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: full-resolution colour


def cached_path(folder: Path, record: ImageRecord) -> Path:
    """Where the cached copy of `record` goes; ValueError unless that stays inside `folder`.

    The readers and the manifest already refuse absolute paths and '..'; this also catches a symbolic
    link inside the cache folder that leads out of it, so that a cache never overwrites another file.
    """
    target = Path(folder) / record.path
    if not target.resolve().is_relative_to(Path(folder).resolve()):
        raise ValueError(f"{record.path} would be written outside the cache folder, to {target.resolve()}")
    return target


def start_cache(folder: Path) -> None:
    """Invalidate an earlier cache in `folder` before its files are overwritten."""
    (folder / _INDEX_NAME).unlink(missing_ok=True)


def finish_cache(dataset_dir: Path, dataset: str, form: CacheForm, root: Path, records: list[ImageRecord]) -> None:
    """Mark the cache of `form` complete for exactly `records` (the readable ones under `root`, all written)."""
    fingerprint = records_fingerprint(root, records)
    if fingerprint is None:
        raise OSError(f"an image under {root} disappeared while the cache was written")
    write_json(form.folder(dataset_dir) / _INDEX_NAME, {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "crop_type": form.crop_type,
        "image_size": form.image_size,
        "jpeg_quality": JPEG_QUALITY,
        "images": len(records),
        "records": fingerprint,
    })


def find_cache(dataset_dir: Path, dataset: str, form: CacheForm, root: Path, records: list[ImageRecord]) -> Path | None:
    """The cache folder of `form` when it was completed from these very records and files and each cached
    file is still there (one stat per file), else None."""
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
        "jpeg_quality": JPEG_QUALITY,
    }
    if not isinstance(index, dict) or any(index.get(key) != value for key, value in expected.items()):
        return None
    fingerprint = records_fingerprint(root, records)
    if fingerprint is None or index.get("records") != fingerprint:
        return None
    if any(file_stamp(folder / record.path) is None for record in records):
        return None
    return folder


def records_fingerprint(root: Path, records: list[ImageRecord]) -> str | None:
    """A digest of what decides the cached pixels: each image's path and box, and its original
    file's size and modification time (a replaced image changes them); None if a file is gone."""
    rows = []
    for record in records:
        stamp = file_stamp(Path(root) / record.path)
        if stamp is None:
            return None
        box = list(record.box) if record.box is not None else None
        rows.append(f"{record.path}\t{box}\t{stamp[0]}\t{stamp[1]}")
    return hashlib.sha256("\n".join(sorted(rows)).encode("utf-8")).hexdigest()
