"""Random partitions of the training classes into meta-classes, one per branch.

Branch m maps class c to meta-class ids[m, c]. Each row is balanced (every meta-class holds
floor or ceil of n_classes / meta_class_size classes) and every column, the code of a class
across the branches, is unique, so the ensemble can tell every training class apart.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from antimetric.base.atomic import write_json
from antimetric.errors import ConfigError

_RANDOM_TRIES = 20
_REPAIR_STEPS = 100_000


def check_class_count(n_classes: int) -> None:
    """Two training classes at least: a meta-class partition needs two parts, so with one class no
    --meta-class-size can be given."""
    if n_classes < 2:
        raise ConfigError(f"the training split has {n_classes} class{'' if n_classes == 1 else 'es'}, and meta-classes "
                          "need 2 or more; give the dataset more classes, or hold fewer out with a lower --val-fraction")


def check_meta_class_size(n_classes: int, meta_class_size: int, ensemble_size: int) -> None:
    check_class_count(n_classes)
    if meta_class_size > n_classes:
        raise ConfigError(
            f"--meta-class-size {meta_class_size} exceeds the {n_classes} training classes; use at most {n_classes}"
        )
    if meta_class_size**ensemble_size < n_classes:
        raise ConfigError(
            f"{meta_class_size} meta-classes over {ensemble_size} branches give {meta_class_size**ensemble_size} codes "
            f"for {n_classes} classes; raise --meta-class-size or --ensemble-size"
        )


def assign_meta_classes(n_classes: int, meta_class_size: int, ensemble_size: int, seed: int) -> np.ndarray:
    """ids (ensemble_size, n_classes) of meta-classes in range(meta_class_size), balanced per row,
    unique per column; the same seed gives the same ids."""
    check_meta_class_size(n_classes, meta_class_size, ensemble_size)
    rng = np.random.default_rng(seed)
    balanced_row = np.arange(n_classes) % meta_class_size
    ids = np.stack([rng.permutation(balanced_row) for _ in range(ensemble_size)])
    for _ in range(_RANDOM_TRIES):
        if _n_duplicate_codes(ids) == 0:
            return ids
        ids = np.stack([rng.permutation(balanced_row) for _ in range(ensemble_size)])
    return _repair(ids, rng)


def _n_duplicate_codes(ids: np.ndarray) -> int:
    return ids.shape[1] - np.unique(ids, axis=1).shape[1]


def _repair(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Swap two classes' meta-classes within one branch (which keeps it balanced) while that does
    not add duplicate codes, until every code is unique. Needed only when codes are scarce."""
    ids = ids.copy()
    n_ensemble, n_classes = ids.shape
    duplicates = _n_duplicate_codes(ids)
    for _ in range(_REPAIR_STEPS):
        if duplicates == 0:
            return ids
        codes = {}
        for c in range(n_classes):
            codes.setdefault(ids[:, c].tobytes(), []).append(c)
        clashing = [cs[1:] for cs in codes.values() if len(cs) > 1]
        a = rng.choice([c for cs in clashing for c in cs])
        m, b = rng.integers(n_ensemble), rng.integers(n_classes)
        ids[m, a], ids[m, b] = ids[m, b], ids[m, a]
        after = _n_duplicate_codes(ids)
        if after <= duplicates:
            duplicates = after
        else:
            ids[m, a], ids[m, b] = ids[m, b], ids[m, a]
    raise ConfigError(
        f"could not give {n_classes} classes unique codes with {n_ensemble} branches; "
        "raise --meta-class-size or --ensemble-size"
    )


def save_meta_ids(path: Path, ids: np.ndarray, class_labels: list[int]) -> None:
    """Write ids with the dataset labels of their columns, atomically, as JSON."""
    payload = {"class_labels": [int(c) for c in class_labels], "ids": ids.tolist()}
    write_json(path, payload)


def load_meta_ids(path: Path, class_labels: list[int], meta_class_size: int, ensemble_size: int) -> np.ndarray:
    """Read ids saved by save_meta_ids and check that they fit this run's classes and sizes."""
    try:
        payload = json.loads(Path(path).read_text())
        ids = np.asarray(payload["ids"], dtype=np.int64)
        saved_labels = [int(c) for c in payload["class_labels"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read meta-class ids from {path} ({exc}); pass a meta_ids.json of an earlier run") from None
    if saved_labels != [int(c) for c in class_labels]:
        raise ConfigError(f"meta-class ids in {path} were drawn for other training classes; drop --load-ids")
    if ids.shape != (ensemble_size, len(class_labels)) or ids.min() < 0 or ids.max() >= meta_class_size:
        raise ConfigError(
            f"meta-class ids in {path} have shape {ids.shape} and range [{ids.min()}, {ids.max()}], but this run "
            f"needs {ensemble_size} branches x {len(class_labels)} classes in range({meta_class_size})"
        )
    return ids
