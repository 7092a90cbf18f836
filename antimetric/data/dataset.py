"""A torch Dataset over image records."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from antimetric.data.images import open_rgb
from antimetric.data.records import ImageRecord


class ImageDataset(Dataset):
    """Yields (image tensor, target). Targets are the record labels mapped through `targets`
    (e.g. a class's meta-class ids across branches), or the labels themselves."""

    def __init__(
        self,
        records: list[ImageRecord],
        root: Path,
        transform: Callable,
        crop: bool = False,
        targets: dict[int, torch.Tensor] | None = None,
    ) -> None:
        self.records = records
        self.root = Path(root)
        self.transform = transform
        self.crop = crop
        self.targets = targets

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        record = self.records[i]
        image = open_rgb(self.root / record.path)
        if self.crop and record.box is not None:
            image = image.crop(record.box)
        target = self.targets[record.label] if self.targets is not None else record.label
        return self.transform(image), target
