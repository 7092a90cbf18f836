"""Loading a dataset, from its settings to batches: its index (from its manifest, prepared where needed), the
folder its images are read from, the torch Dataset over its records and the loaders over that, with their
worker processes and store of decoded images. Training's session and `evaluate` both read their data so."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from antimetric.base.cpus import available_cpus
from antimetric.data.cache import CacheForm, find_cache
from antimetric.data.decoded_images import DecodedImages
from antimetric.data.demo import ensure_demo
from antimetric.data.images import open_rgb
from antimetric.data.manifest.prepare import NO_MANIFEST, load_or_prepare, why_out_of_date
from antimetric.data.readers.source import data_source
from antimetric.data.records import DatasetIndex, ImageRecord
from antimetric.data.settings import DataConfig
from antimetric.data.splits import EvalSet
from antimetric.data.transforms import ImageTransform
from antimetric.errors import ConfigError


def load_index(data: DataConfig, progress: bool, started_on: str | None = None) -> DatasetIndex:
    """The dataset of a run's data section from its manifest (prepared first where needed; the demo generated on
    first use).

    `started_on`: the digest of the data a resumed run started on; data changed since is refused in one line."""
    source = data_source(data)
    if not source.own and source.name == "demo":
        ensure_demo(source.dataset_dir, progress=progress)
    stale = why_out_of_date(source) if started_on is not None else None
    if stale is not None and stale != NO_MANIFEST:
        raise ConfigError(f"--resume: {source.name}: {stale}; this run trained on the data as it was: start a new "
                          "run, which prepares the data again")
    index = load_or_prepare(source, progress=progress)
    if started_on is not None and index.digest() != started_on:
        raise ConfigError(f"--resume: the images, labels or splits of {source.name} changed since this run started; "
                          "it trained on the data as it was: start a new run")
    if data.crop_type == "cropped" and not any(record.box is not None for record in index.records):
        raise ConfigError(f"--crop-type cropped needs bounding boxes, which {source.name} does not have (a table "
                          "gives them in columns x_1, x_2, y_1, y_2); drop --crop-type")
    return index


def image_source(data: DataConfig, index: DatasetIndex, progress: bool) -> tuple[Path, bool]:
    """The folder to read images from and whether boxes still need cropping: the resized cache
    when one matches this crop type, image size and manifest, else the dataset's own files."""
    crop = data.crop_type == "cropped"
    if not data.image_cache:
        return index.root, crop
    form = CacheForm(data.crop_type, data.image_size)
    source = data_source(data)
    folder = find_cache(source.work_dir, source.name, form, index.root, index.records)
    if folder is None:
        return index.root, crop
    if progress:
        print(f"reading resized images from {folder}", file=sys.stderr)
    return folder, False  # boxes were applied when the cache was written


class ImageDataset(Dataset):
    """Yields (image tensor, target). Targets are the record labels mapped through `targets`
    (e.g. a class's meta-class ids across branches), or the labels themselves. With `memory`,
    each image is decoded and resized once and kept there (the datasets of one run share it)."""

    def __init__(
        self,
        records: list[ImageRecord],
        root: Path,
        transform: ImageTransform,
        crop: bool = False,
        targets: dict[int, torch.Tensor] | None = None,
        memory: DecodedImages | None = None,
    ) -> None:
        self.records = records
        self.root = Path(root)
        self.transform = transform
        self.crop = crop
        self.targets = targets
        self.memory = memory

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        record = self.records[i]
        decoded = self.memory.get(record.path) if self.memory is not None else None
        if decoded is None:
            image = open_rgb(self.root / record.path)
            if self.crop and record.box is not None:
                image = image.crop(record.box)
            decoded = self.transform.decoded(image)
            if self.memory is not None:
                self.memory.keep(record.path, decoded)
        target = self.targets[record.label] if self.targets is not None else record.label
        return self.transform.finish(decoded), target


@dataclass
class EvalLoaders:
    query: DataLoader
    gallery: DataLoader | None


def eval_loaders(eval_set: EvalSet, image_root: Path, transform: ImageTransform, crop: bool, batch_size: int,
                 workers: int, device: torch.device, memory: DecodedImages | None = None) -> EvalLoaders:
    """Loaders of an evaluation set's queries (and gallery), in record order, unshuffled."""
    def loader(records):
        return DataLoader(ImageDataset(records, image_root, transform, crop, memory=memory), batch_size=batch_size,
                          num_workers=workers, pin_memory=device.type == "cuda")
    return EvalLoaders(loader(eval_set.query), loader(eval_set.gallery) if eval_set.gallery is not None else None)


DEFAULT_IMAGE_MEMORY_MIB = 1024


def image_memory_mib(requested: int | None, workers: int) -> int:
    """MiB of decoded images to keep between epochs: what --image-memory asks, else 1024 MiB when the
    images load in this process (a worker process's store would end with its epoch)."""
    if requested is not None:
        return requested
    return DEFAULT_IMAGE_MEMORY_MIB if workers == 0 else 0


def num_workers(requested: int | None) -> int:
    """Decoding in the main process is fastest on two cores; more cores get worker processes."""
    if requested is not None:
        return requested
    cpus = available_cpus()
    return 0 if cpus <= 2 else min(8, cpus - 1)
