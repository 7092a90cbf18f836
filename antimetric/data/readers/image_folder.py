"""Reader for a user's folder of class subfolders (torchvision's ImageFolder layout), and the draw of its test classes.

ROOT/<class>/<image>: every image under a first-level subfolder, at any depth, belongs to that class. Hidden
files and folders are skipped (and antimetric's own cache of resized images), and so are symbolic links that lead out of ROOT (folders linked anywhere are
not followed), so that nothing outside the folder is read. This module also owns what counts as an image
file: its suffixes (for a scan) and its first bytes (for a table that names files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np

from antimetric.data.cache import CACHE_FOLDER
from antimetric.data.records import TEST, TRAIN, DatasetIndex, ImageRecord
from antimetric.errors import ConfigError, DatasetLayoutError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})

# The first bytes of the formats of IMAGE_SUFFIXES; WEBP is b"RIFF", a 4-byte size, then b"WEBP".
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a", b"GIF89a",
    b"BM",
    b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",  # TIFF, BigTIFF
    b"P1", b"P2", b"P3", b"P4", b"P5", b"P6",  # PBM/PGM/PPM, plain and raw
)
SIGNATURE_BYTES = 12  # enough bytes of a file for has_image_signature


def has_image_signature(head: bytes) -> bool:
    """Whether a file's first bytes are those of a format in IMAGE_SUFFIXES (the file is not decoded)."""
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def scan_images(root: Path) -> list[str]:
    """Image files under root (resolved), relative and sorted; links out of root and hidden entries skipped."""
    return sorted(path for _, images in _walk(root) for path in images)


def read_image_folder(folder: Path, name: str) -> DatasetIndex:
    """Index ROOT/<class>/...: labels are positions in the sorted class names, every record TRAIN.

    The test classes are drawn afterwards (split_test_classes). `sources` lists every folder visited: a
    folder's modification time changes when an image is added to it, removed or moved out.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise DatasetLayoutError(f"{name}: {root} {problem}; pass a folder holding one subfolder of images per class")
    folders: list[str] = []
    images: list[str] = []
    for relative, found in _walk(root):
        folders.append(relative)
        images.extend(found)
    classes = sorted(relative for relative in folders if relative != "." and "/" not in relative)
    per_class = {class_name: 0 for class_name in classes}
    in_classes = []
    for path in images:
        parts = PurePosixPath(path).parts
        if len(parts) > 1:  # images lying in ROOT itself belong to no class
            per_class[parts[0]] += 1
            in_classes.append(path)
    if not in_classes:
        raise DatasetLayoutError(
            f"{name}: no class subfolder holding an image in {root}; put each class's images in a subfolder "
            f"named after the class, e.g. {root}/<class>/<image>.jpg"
        )
    empty = [class_name for class_name, count in per_class.items() if count == 0]
    if empty:
        more = f" (and {len(empty) - 1} other class folder(s) of {root})" if len(empty) > 1 else ""
        raise DatasetLayoutError(
            f"{name}: the class folder {root / empty[0]} holds no image{more}; remove it or add images of that class"
        )
    label_of = {class_name: label for label, class_name in enumerate(classes)}
    records = [ImageRecord(path=path, label=label_of[PurePosixPath(path).parts[0]], split=TRAIN)
               for path in sorted(in_classes)]
    return DatasetIndex(name=name, root=root, records=records, class_names=dict(enumerate(classes)),
                        sources=tuple(sorted(folders)))


def split_test_classes(index: DatasetIndex, fraction: float, seed: int) -> DatasetIndex:
    """A copy of `index` whose records of round(fraction * classes) classes are TEST and the rest TRAIN.

    The test classes are the first of a seeded permutation of the sorted class names, so the draw depends
    only on the names, the fraction and the seed, not on the order the file system lists folders in. An
    index without class_names is drawn on its labels written as text.
    """
    names = index.class_names or {label: str(label) for label in {r.label for r in index.records}}
    by_name = sorted(names.values())
    n_test = min(max(round(fraction * len(by_name)), 0), len(by_name))
    n_train = len(by_name) - n_test
    if n_train < 2 or n_test < 2:
        hint = "" if len(by_name) >= 4 else f" (no fraction can with {len(by_name)} classes: add classes)"
        raise ConfigError(
            f"{index.name}: --test-classes {fraction:g} of {len(by_name)} classes leaves {n_train} training and "
            f"{n_test} test classes; each side needs at least 2: choose another --test-classes{hint}"
        )
    drawn = np.random.default_rng(seed).permutation(len(by_name))[:n_test]
    test_names = {by_name[i] for i in drawn}
    test_labels = {label for label, class_name in names.items() if class_name in test_names}
    records = [replace(r, split=TEST if r.label in test_labels else TRAIN) for r in index.records]
    return replace(index, records=records)


def _walk(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, the images in it) for each folder under root visited, both relative to root ('.': root). The
    resized-image cache antimetric writes into a dataset's folder (CACHE_FOLDER) is not a class."""
    for folder, subfolders, files in os.walk(root):  # does not descend into linked folders
        subfolders[:] = [name for name in subfolders
                         if not name.startswith(".") and not (name == CACHE_FOLDER and Path(folder) == root)]
        images = []
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            file = Path(folder) / name
            if file.is_symlink() and not file.resolve().is_relative_to(root):
                continue
            images.append(file.relative_to(root).as_posix())
        yield Path(folder).relative_to(root).as_posix(), images
