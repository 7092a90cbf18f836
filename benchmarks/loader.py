"""Input pipeline alone: JPEG decode + the seed's training augmentation, through a DataLoader.

    python -m benchmarks.loader --workers 0 4 8 15 --json

Writes CUB-sized JPEGs (500 x 375 by default, random content) to a temporary folder and reports
images/s for each worker count, with pinned memory, as training would load them: from the
original files, and from the resized cache `prepare --cache-size` writes (same code).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from antimetric.data.cache import CacheForm, resized_for_cache, save_cached
from antimetric.data.images import open_rgb
from antimetric.data.loading import ImageDataset
from antimetric.data.records import ImageRecord
from antimetric.data.table import TABLE
from antimetric.data.transforms import train_transform


def write_images(folder: Path, n: int, size: tuple[int, int]) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        # smooth colour fields plus noise: JPEG sizes like photographs, not like flat colour
        coarse = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        records.append(ImageRecord(path.name, i % 10, "train"))
    return records


def write_cache(records: list[ImageRecord], root: Path, folder: Path, image_size: int) -> float:
    """Write the cached copies as `prepare --cache-size` does; returns their mean absolute error
    against the resized originals, in units of the 0..1 pixel range (JPEG's rounding)."""
    form = CacheForm("uncropped", image_size)
    errors = []
    for record in records:
        with open_rgb(root / record.path) as image:
            resized = resized_for_cache(image, record, form)
        save_cached(resized, record, folder)
        with open_rgb(folder / record.path) as cached:
            difference = np.asarray(cached, dtype=np.float64) - np.asarray(resized, dtype=np.float64)
        errors.append(np.abs(difference).mean() / 255)
    return float(np.mean(errors))


def loader_rate(records: list[ImageRecord], root: Path, workers: int, image_size: int, batch_size: int,
                epochs: int) -> float:
    dataset = ImageDataset(records, root, train_transform((TABLE["cub"].mean, TABLE["cub"].std), "uncropped", image_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    for _ in loader:  # start the workers, warm the page cache
        break
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _ in loader:
            seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def run(workers: list[int], n_images: int = 256, image_size: int = 256, batch_size: int = 32, epochs: int = 3,
        source_size: tuple[int, int] = (500, 375)) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        originals, cache = Path(tmp) / "originals", Path(tmp) / "cache"
        originals.mkdir()
        records = write_images(originals, n_images, source_size)
        error = write_cache(records, originals, cache, image_size)
        rates, cached = {}, {}
        for w in workers:  # interleaved, so a change in the machine's load hits both alike
            rates[str(w)] = loader_rate(records, originals, w, image_size, batch_size, epochs)
            cached[str(w)] = loader_rate(records, cache, w, image_size, batch_size, epochs)
    return {"cpus": os.cpu_count(), "image": f"{source_size[0]}x{source_size[1]} JPEG q90", "image_size": image_size,
            "images_per_s_by_workers": rates, "cached_images_per_s_by_workers": cached,
            "cache_mean_abs_error": error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--source-size", type=int, nargs=2, default=[500, 375], metavar=("WIDTH", "HEIGHT"),
                        help="size of the original JPEGs (default: 500 375, CUB's typical size)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.workers, args.images, args.image_size, epochs=args.epochs, source_size=tuple(args.source_size))
    print(json.dumps(result, indent=1) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
