"""Which images train, select the model (validation) and measure it (test)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from antimetric.data.records import GALLERY, QUERY, TEST, TRAIN, DatasetIndex, ImageRecord
from antimetric.errors import ConfigError


@dataclass
class EvalSet:
    """Images to retrieve among. gallery None: leave-one-out within `query` (CUB, CARS, SOP)."""

    query: list[ImageRecord]
    gallery: list[ImageRecord] | None = None


@dataclass
class Splits:
    train: list[ImageRecord]
    train_classes: list[int]  # sorted dataset labels; column order of the meta-class ids
    val: EvalSet | None  # held-out training classes, for model selection
    test: EvalSet  # classes never seen in training


def make_splits(index: DatasetIndex, val_fraction: float, max_per_class: int, seed: int) -> Splits:
    """Hold out a seeded fraction of the training classes for validation, and keep at most
    max_per_class training images per class (a seeded sample, as the seed's 300 cap)."""
    rng = np.random.default_rng(seed)
    train = index.split(TRAIN)
    classes = sorted({r.label for r in train})
    if not classes:
        raise ConfigError(f"{index.name}: no training images found under {index.root}")
    n_val = int(round(val_fraction * len(classes)))
    if val_fraction > 0 and not 2 <= n_val <= len(classes) - 2:
        raise ConfigError(
            f"--val-fraction {val_fraction} holds out {n_val} of {len(classes)} training classes; "
            "choose a fraction that leaves at least 2 classes on each side"
        )
    val_classes = set(rng.choice(classes, size=n_val, replace=False).tolist()) if n_val else set()
    train_classes = [c for c in classes if c not in val_classes]
    kept = _cap_per_class([r for r in train if r.label not in val_classes], max_per_class, rng)
    val = EvalSet([r for r in train if r.label in val_classes]) if val_classes else None
    return Splits(kept, train_classes, val, test_set(index))


def test_set(index: DatasetIndex) -> EvalSet:
    """The classes never trained on: In-shop's query and gallery, else the test split searched leave-one-out."""
    if index.split(QUERY):
        test = EvalSet(index.split(QUERY), index.split(GALLERY))
    else:
        test = EvalSet(index.split(TEST))
    if not test.query:
        raise ConfigError(f"{index.name}: no test images found under {index.root}")
    return test


def _cap_per_class(records: list[ImageRecord], max_per_class: int, rng: np.random.Generator) -> list[ImageRecord]:
    by_class: dict[int, list[ImageRecord]] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    kept = []
    for label in sorted(by_class):
        images = by_class[label]
        if len(images) > max_per_class:
            chosen = sorted(rng.choice(len(images), size=max_per_class, replace=False).tolist())
            images = [images[i] for i in chosen]
        kept.extend(images)
    return kept
