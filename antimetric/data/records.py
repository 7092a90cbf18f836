"""The in-memory index of a dataset: one record per image, independent of the layout it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Split names. CUB, CARS and SOP have train/test; In-shop has train/query/gallery.
TRAIN, TEST, QUERY, GALLERY = "train", "test", "query", "gallery"

# Box as (left, upper, right, lower) in pixels, the order PIL's Image.crop takes.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageRecord:
    path: str  # relative to DatasetIndex.root, with forward slashes
    label: int  # the dataset's own class id (CUB/CARS class, SOP class_id, In-shop item id number)
    split: str  # TRAIN, TEST, QUERY or GALLERY
    box: Box | None = None  # bounding box (CUB, CARS only)


@dataclass
class DatasetIndex:
    name: str  # 'cub', 'car', 'sop', 'isc' or 'demo'
    root: Path  # folder the record paths are relative to
    records: list[ImageRecord] = field(default_factory=list)

    def split(self, split: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == split]

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records}, key=_SPLIT_ORDER.index)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per split: number of images and of classes."""
        out = {}
        for split in self.splits:
            records = self.split(split)
            out[split] = {"images": len(records), "classes": len({r.label for r in records})}
        return out


_SPLIT_ORDER = [TRAIN, TEST, QUERY, GALLERY]
