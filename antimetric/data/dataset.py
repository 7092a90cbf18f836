"""A torch Dataset over image records."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from antimetric.data.decoded_images import DecodedImages
from antimetric.data.images import open_rgb
from antimetric.data.records import ImageRecord
from antimetric.data.transforms import ImageTransform


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
