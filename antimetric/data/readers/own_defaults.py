"""The defaults a user's own images give a run, measured on the data: what a benchmark's row of the dataset table
(antimetric.data.table) states, a user's folder or table has to be asked.

- the meta-class size: the seed's 12 (the demo's 6 with the tiny backbone), at most the training classes left
  after the validation classes are held out, and enough for `meta ** ensemble >= classes` (the core's rules);
- Recall@K: 1, 2, 4, 8 as for CUB and CARS, or 1, 10, 100, 1000 as for SOP from a gallery of 10,000 images on,
  each K below the gallery's size;
- the normalisation: ImageNet's statistics for pretrained weights (what they were trained with), else the channel
  mean and standard deviation measured on a seeded sample of the training images.
"""
from __future__ import annotations

import numpy as np

from antimetric.data.images import open_rgb
from antimetric.data.records import DatasetIndex
from antimetric.data.splits import make_splits, test_set
from antimetric.data.table import IMAGENET_MEAN_STD, RGB

SMALL_GALLERY_RECALLS = (1, 2, 4, 8)  # CUB's and CARS'
LARGE_GALLERY_RECALLS = (1, 10, 100, 1000)  # SOP's
LARGE_GALLERY = 10_000
STATISTICS_SAMPLE = 256  # training images the normalisation is measured on
_STATISTICS_SIDE = 64  # each is shrunk to this before its pixels are counted: the statistics hardly change


def training_classes(index: DatasetIndex, val_fraction: float, max_per_class: int, seed: int,
                     val_fold: int | None) -> int:
    """How many classes train once the validation classes are held out, as the run will split them."""
    return len(make_splits(index, val_fraction, max_per_class, seed, val_fold=val_fold).train_classes)


def meta_class_size(preferred: int, n_classes: int, ensemble_size: int) -> int:
    """`preferred`, brought within the sizes the core accepts for n_classes and ensemble_size."""
    size = min(preferred, n_classes)
    while size**ensemble_size < n_classes:
        size += 1
    return max(2, size)


def recalls_for(index: DatasetIndex) -> tuple[int, ...]:
    """The Recall@K values that fit the test gallery: each K below the number of images a query searches."""
    test = test_set(index)
    searched = len(test.gallery) if test.gallery is not None else len(test.query) - 1
    candidates = LARGE_GALLERY_RECALLS if searched >= LARGE_GALLERY else SMALL_GALLERY_RECALLS
    return tuple(k for k in candidates if k <= max(1, searched))


def normalisation(index: DatasetIndex, pretrained: bool, seed: int = 0) -> tuple[RGB, RGB]:
    """ImageNet's statistics with pretrained weights, else those measured on the training images."""
    if pretrained:
        return IMAGENET_MEAN_STD
    return measure_mean_std(index, seed=seed)


def measure_mean_std(index: DatasetIndex, *, sample: int = STATISTICS_SAMPLE, seed: int = 0) -> tuple[RGB, RGB]:
    """Channel mean and standard deviation (0..1 scale) of a seeded sample of the training images, each shrunk
    to at most 64 px; unreadable ones are passed over (the run skips and counts them)."""
    train = [record for record in index.records if record.split == "train"]
    order = np.random.default_rng(seed).permutation(len(train))
    total, total_sq, count, measured = np.zeros(3), np.zeros(3), 0, 0
    for i in order:
        if measured >= sample:
            break
        try:
            with open_rgb(index.root / train[i].path) as image:
                image.thumbnail((_STATISTICS_SIDE, _STATISTICS_SIDE))
                pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
        except Exception:  # PIL raises OSError, ValueError, SyntaxError... on damaged files
            continue
        total += pixels.sum(axis=0)
        total_sq += (pixels**2).sum(axis=0)
        count += len(pixels)
        measured += 1
    if not count:
        return IMAGENET_MEAN_STD
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(max(v, 1e-3)), 4) for v in std)
