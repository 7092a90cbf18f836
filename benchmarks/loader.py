"""Input pipeline alone: JPEG decode + the seed's training augmentation, through a DataLoader.

    python benchmarks/loader.py --workers 0 4 8 15 --json

Writes CUB-sized JPEGs (500 x 375, random content) to a temporary folder and reports
images/s for each worker count, with pinned memory, as training would load them.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from antimetric.data.dataset import ImageDataset  # noqa: E402
from antimetric.data.records import ImageRecord  # noqa: E402
from antimetric.data.transforms import train_transform  # noqa: E402


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


def loader_rate(records: list[ImageRecord], root: Path, workers: int, image_size: int, batch_size: int,
                epochs: int) -> float:
    dataset = ImageDataset(records, root, train_transform("cub", "uncropped", image_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    for _ in loader:  # start the workers, warm the page cache
        break
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _ in loader:
            seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def run(workers: list[int], n_images: int = 256, image_size: int = 256, batch_size: int = 32, epochs: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        records = write_images(folder, n_images, (500, 375))
        rates = {str(w): loader_rate(records, folder, w, image_size, batch_size, epochs) for w in workers}
    return {"cpus": os.cpu_count(), "image": "500x375 JPEG q90", "image_size": image_size,
            "images_per_s_by_workers": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.workers, args.images, epochs=args.epochs)
    print(json.dumps(result, indent=1) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
