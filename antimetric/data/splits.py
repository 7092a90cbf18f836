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


def make_splits(index: DatasetIndex, val_fraction: float, max_per_class: int, seed: int,
                val_fold: int | None = None) -> Splits:
    """Hold out a seeded fraction of the training classes for validation, and keep at most
    max_per_class training images per class (a seeded sample, as the seed's 300 cap).

    val_fold r holds out fold r of class_folds(classes, val_fraction, seed) instead: runs that share
    `seed` and differ in r validate on disjoint classes. Fold 0 is the draw made without val_fold, and
    the cap is drawn as without it.
    """
    rng = np.random.default_rng(seed)
    train = index.split(TRAIN)
    classes = sorted({r.label for r in train})
    if not classes:
        raise ConfigError(f"{index.name}: no training images found under {index.root}")
    n_val = _validation_size(classes, val_fraction)
    val_classes = set(rng.choice(classes, size=n_val, replace=False).tolist()) if n_val else set()
    if val_fold is not None:
        val_classes = set(_fold(classes, val_fraction, seed, val_fold))
    train_classes = [c for c in classes if c not in val_classes]
    kept = _cap_per_class([r for r in train if r.label not in val_classes], max_per_class, rng)
    val = EvalSet([r for r in train if r.label in val_classes]) if val_classes else None
    return Splits(kept, train_classes, val, test_set(index))


def class_folds(classes: list[int], val_fraction: float, seed: int) -> list[list[int]]:
    """The training classes cut into disjoint folds of round(val_fraction * len(classes)) classes each, every
    fold sorted; fold 0 is the draw make_splits holds out without val_fold, the others follow in a seeded
    order. Every fold has the same size, so the len(classes) % fold-size classes left over are never
    held out (they always train): repeats over folds then validate on equally many classes.
    No folds for val_fraction 0."""
    rng = np.random.default_rng(seed)
    classes = sorted(classes)
    n_val = _validation_size(classes, val_fraction)
    if not n_val:
        return []
    first = rng.choice(classes, size=n_val, replace=False).tolist()
    rest = rng.permutation([c for c in classes if c not in set(first)]).tolist()
    order = first + rest
    return [sorted(order[start:start + n_val]) for start in range(0, len(classes) - n_val + 1, n_val)]


def _fold(classes: list[int], val_fraction: float, seed: int, val_fold: int) -> list[int]:
    if val_fold < 0:
        raise ValueError(f"val_fold must be >= 0, not {val_fold}")
    folds = class_folds(classes, val_fraction, seed)
    if val_fold >= len(folds):
        needed = val_fold + 1
        fix = "lower --repeats or --val-fraction" if folds else "choose a --val-fraction above 0"
        raise ConfigError(
            f"--repeats {needed} needs {needed} validation fold{'s' if needed > 1 else ''} but --val-fraction "
            f"{val_fraction} of {len(classes)} training classes gives {len(folds)}; {fix}"
        )
    return folds[val_fold]


def _validation_size(classes: list[int], val_fraction: float) -> int:
    """How many classes val_fraction holds out, checked to leave at least 2 on each side."""
    n_val = int(round(val_fraction * len(classes)))
    if val_fraction > 0 and not 2 <= n_val <= len(classes) - 2:
        raise ConfigError(
            f"--val-fraction {val_fraction} holds out {n_val} of {len(classes)} training classes; "
            "choose a fraction that leaves at least 2 classes on each side"
        )
    return n_val


def test_set(index: DatasetIndex) -> EvalSet:
    """The classes never trained on: In-shop's query and gallery, else the test split searched leave-one-out."""
    if index.split(QUERY):
        test = EvalSet(index.split(QUERY), index.split(GALLERY))
    else:
        test = EvalSet(index.split(TEST))
    if not test.query:
        raise ConfigError(f"{index.name}: no test images found under {index.root}")
    _check_some_query_has_a_positive(index.name, test)
    return test


def _check_some_query_has_a_positive(name: str, test: EvalSet) -> None:
    """Recall@K needs a query with another image of its class to find. Queries without one are left out of the
    metrics (evaluation.metrics.LeftOutQueries says how many); with none left, every metric would be NaN."""
    if test.gallery is None:
        counts: dict[int, int] = {}
        for record in test.query:
            counts[record.label] = counts.get(record.label, 0) + 1
        if max(counts.values()) < 2:
            raise ConfigError(f"{name}: each of its {len(counts)} test classes has a single image, so no query has "
                              "another image of its class to find; give the test classes at least 2 images each")
    elif not {r.label for r in test.query} & {r.label for r in test.gallery}:
        raise ConfigError(f"{name}: no query's class has an image in the gallery, so no query has anything to find; "
                          "put images of the query classes in the gallery")


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
