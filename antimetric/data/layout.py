"""Public entry point for reading a dataset folder in its official layout into a DatasetIndex."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from antimetric.data.cars import CARS_LAYOUT, read_cars
from antimetric.data.cub import CUB_LAYOUT, read_cub
from antimetric.data.index_files import LayoutSpec
from antimetric.data.inshop import INSHOP_LAYOUT, read_inshop
from antimetric.data.records import DatasetIndex
from antimetric.data.sop import SOP_LAYOUT, read_sop
from antimetric.errors import DatasetLayoutError

Reader = Callable[[Path], DatasetIndex]


@dataclass(frozen=True)
class Layout:
    read: Reader
    spec: LayoutSpec  # its index_files are what the manifest watches for edits


# 'demo' is a small set in the CUB layout (same files, same class-halves split) under its own name.
LAYOUTS: dict[str, Layout] = {
    "cub": Layout(read_cub, CUB_LAYOUT),
    "car": Layout(read_cars, CARS_LAYOUT),
    "sop": Layout(read_sop, SOP_LAYOUT),
    "isc": Layout(read_inshop, INSHOP_LAYOUT),
    "demo": Layout(partial(read_cub, name="demo"), CUB_LAYOUT),
}
READERS: dict[str, Reader] = {name: layout.read for name, layout in LAYOUTS.items()}


def read_dataset(name: str, dataset_dir: Path) -> DatasetIndex:
    """Parse the index files of `dataset_dir` in the official layout of dataset `name`.

    Only the index files are read: images are neither opened nor checked for existence (see
    antimetric.data.manifest.prepare for that). A missing or malformed layout raises DatasetLayoutError.
    """
    return _layout(name).read(Path(dataset_dir))


def index_files(name: str) -> tuple[str, ...]:
    """The files, relative to the layout's root, that read_dataset parses for dataset `name`."""
    return _layout(name).spec.index_files


def _layout(name: str) -> Layout:
    layout = LAYOUTS.get(name)
    if layout is None:
        raise DatasetLayoutError(f"unknown dataset {name!r}; valid names: {', '.join(LAYOUTS)}")
    return layout
