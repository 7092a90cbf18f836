"""The images a gallery index holds or a retrieval asks about: found, labelled and embedded.

Two kinds of folder: a dataset folder (its name one of DATASETS and its official layout inside),
whose test split is read from its manifest with the dataset's class ids as labels (In-shop: its
gallery split); or any folder of images, searched recursively, labelled by first-level subfolder
when every image sits exactly one level down (torchvision's ImageFolder layout). Paths are kept
relative to an absolute root, and nothing outside the root is read: symbolic links that lead out
of it are skipped, and so are hidden files and folders.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from antimetric.data.images import open_rgb
from antimetric.data.manifest.prepare import load_or_prepare
from antimetric.data.readers import read_dataset
from antimetric.data.readers.image_folder import IMAGE_SUFFIXES, scan_images
from antimetric.data.readers.source import TABLE_SUFFIXES, DataSource, benchmark, own_data
from antimetric.data.records import GALLERY, TEST, DatasetIndex
from antimetric.data.settings import DATASETS
from antimetric.errors import ConfigError, DatasetLayoutError

NO_LABEL = -1
_REPORTED_FAILURES = 20


@dataclass
class ImageSet:
    """Images under one root; labels are dataset class ids, or positions in class_names for a folder."""

    root: Path  # absolute
    folder: Path  # the folder given (resolved): a dataset folder, or the root itself
    paths: list[str]  # relative to root, forward slashes
    labels: np.ndarray  # (n,) int64, NO_LABEL where unknown
    class_names: list[str] = field(default_factory=list)  # a folder's class names; empty for a dataset
    boxes: np.ndarray | None = None  # (n, 4) float32 (left, upper, right, lower), NaN rows: no box
    dataset: str | None = None  # the dataset's name, for a dataset folder
    split: str | None = None  # the dataset split held

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels != NO_LABEL).all())

    def describe(self) -> str:
        if self.dataset is not None:
            return f"the {self.dataset} {self.split} split ({len(np.unique(self.labels))} classes)"
        if self.class_names:
            return f"a folder of {len(self.class_names)} class subfolders"
        return "a folder without class subfolders (no labels)"


def is_dataset_folder(path: Path) -> bool:
    """A folder named after a dataset whose official layout parses."""
    if path.name not in DATASETS or not path.is_dir():
        return False
    try:
        read_dataset(path.name, path)
    except DatasetLayoutError:
        return False
    return True


def find_images(path: Path, *, progress: bool = False) -> ImageSet:
    """The gallery images of PATH (a dataset folder, a table of your own images, or any folder of images);
    ConfigError when there are none."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        images = dataset_images(own_data(path), path, progress=progress)
    elif not path.is_dir():
        raise ConfigError(f"--images {path}: no such folder; pass a dataset folder (e.g. data/cub), a folder "
                          f"of images or a table ({', '.join(TABLE_SUFFIXES)}) with columns label, path, split")
    elif is_dataset_folder(path):
        images = dataset_images(benchmark(path.name, path.parent), path, progress=progress)
    else:
        images = folder_images(path)
    if not images.paths:
        raise ConfigError(f"no images found in {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files, "
                          "hidden folders skipped)")
    return images


def dataset_images(source: DataSource, path: Path, *, progress: bool = False) -> ImageSet:
    """A dataset's test split (In-shop and a table with is_query/is_gallery: its gallery), from its manifest
    (prepared first if needed); `path` is what the user named."""
    index: DatasetIndex = load_or_prepare(source, progress=progress)
    split = GALLERY if index.split(GALLERY) else TEST
    records = index.split(split)
    boxes = None
    if any(r.box is not None for r in records):
        boxes = np.array([r.box if r.box is not None else (np.nan,) * 4 for r in records], dtype=np.float32)
    return ImageSet(Path(index.root).resolve(), path.resolve(), [r.path for r in records],
                    np.array([r.label for r in records], dtype=np.int64), [], boxes, source.name, split)


def folder_images(path: Path) -> ImageSet:
    """Every image under PATH; labelled by subfolder when all of them sit exactly one level down."""
    root = path.resolve()
    paths = scan_images(root)
    if paths and all(len(PurePosixPath(p).parts) == 2 for p in paths):
        class_names = sorted({PurePosixPath(p).parts[0] for p in paths})
        position = {name: i for i, name in enumerate(class_names)}
        labels = np.array([position[PurePosixPath(p).parts[0]] for p in paths], dtype=np.int64)
        return ImageSet(root, root, paths, labels, class_names)
    return ImageSet(root, root, paths, np.full(len(paths), NO_LABEL, dtype=np.int64))


def check_relative(path: str) -> str:
    """`path` if it stays inside its root (relative, no '..'), else ConfigError."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ConfigError(f"the path {path!r} leads outside its root; this index is damaged: rebuild it")
    return path


class _ImageFiles(Dataset):
    """Yields (image tensor or None when it cannot be read, why not, position)."""

    def __init__(self, files: list[Path], boxes: np.ndarray | None, transform: Callable) -> None:
        self.files, self.boxes, self.transform = files, boxes, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str, int]:
        try:
            image = open_rgb(self.files[i])  # a pipe, socket or device: ValueError, without waiting for a writer
            if self.boxes is not None and not np.isnan(self.boxes[i]).any():
                image = image.crop(tuple(float(v) for v in self.boxes[i]))
            return self.transform(image), "", i
        except Exception as error:  # PIL raises OSError, ValueError, SyntaxError... on damaged files
            return None, f"{type(error).__name__}: {' '.join(str(error).split())}"[:200], i


@dataclass
class EmbeddedBatch:
    embeddings: torch.Tensor  # (b, dim) float32
    positions: list[int]  # the images' positions in the list embedded


@dataclass
class Failures:
    """Images that could not be read: a count, and the first few with the reason."""

    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < _REPORTED_FAILURES:
            self.examples.append((path, reason))


def _collate(items: list) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    read = [(tensor, i) for tensor, _, i in items if tensor is not None]
    failed = [(i, reason) for tensor, reason, i in items if tensor is None]
    batch = torch.stack([tensor for tensor, _ in read]) if read else None
    return batch, [i for _, i in read], failed


def embed_files(ensemble, files: list[Path], boxes: np.ndarray | None, failures: Failures, *, batch_size: int,
                workers: int, progress: bool = False, desc: str = "embed") -> Iterator[EmbeddedBatch]:
    """Embed image files in order through a DataLoader with the ensemble's test transform (`ensemble`: a
    TrainedEnsemble); an unreadable file is skipped and added to `failures`. Boxes crop before the transform."""
    loader = DataLoader(_ImageFiles(files, boxes, ensemble.transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=ensemble.device.type == "cuda")
    with tqdm(total=len(files), desc=desc, unit="img", file=sys.stderr, disable=not progress) as bar:
        for batch, positions, failed in loader:
            for i, reason in failed:
                failures.add(str(files[i]), reason)
            if batch is not None:
                yield EmbeddedBatch(ensemble.embed_tensor(batch), positions)
            bar.update(len(positions) + len(failed))
