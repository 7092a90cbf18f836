"""The in-memory index of a dataset: one record per image, independent of the layout it came from."""
from __future__ import annotations

import hashlib
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
    box: Box | None = None  # bounding box (CUB, CARS, and a table with x_1, x_2, y_1, y_2)
    category: str | None = None  # a table's optional `category` column (open-metric-learning's)


@dataclass
class DatasetIndex:
    name: str  # 'cub', 'car', 'sop', 'isc', 'demo', or the name of a user's folder or table
    root: Path  # folder the record paths are relative to
    records: list[ImageRecord] = field(default_factory=list)
    class_names: dict[int, str] = field(default_factory=dict)  # label -> the user's class name (own data only)
    # What the index was read from, relative to root (or absolute, for a table outside it): the index files of
    # a layout, a table, or every folder of a folder of class subfolders. The manifest keeps their stamps, so
    # that an edited table or an image added, removed or moved between class folders is noticed.
    sources: tuple[str, ...] = ()

    def split(self, split: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == split]

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records}, key=_SPLIT_ORDER.index)

    def digest(self) -> str:
        """A digest of what a run trains and is scored on: each image's path, label, split and box (not its
        pixels: the manifest notices a replaced image by its stamp)."""
        rows = sorted(f"{r.path}\t{r.label}\t{r.split}\t{r.box}" for r in self.records)
        return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()[:16]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per split: number of images and of classes."""
        out = {}
        for split in self.splits:
            records = self.split(split)
            out[split] = {"images": len(records), "classes": len({r.label for r in records})}
        return out


_SPLIT_ORDER = [TRAIN, TEST, QUERY, GALLERY]
