"""Public entry point for reading a dataset folder in its official layout into a DatasetIndex."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from antimetric.data.cars import read_cars
from antimetric.data.cub import read_cub
from antimetric.data.inshop import read_inshop
from antimetric.data.records import DatasetIndex
from antimetric.data.sop import read_sop
from antimetric.errors import DatasetLayoutError

Reader = Callable[[Path], DatasetIndex]

# 'demo' is a small set in the CUB layout (same files, same class-halves split) under its own name.
READERS: dict[str, Reader] = {
    "cub": read_cub,
    "car": read_cars,
    "sop": read_sop,
    "isc": read_inshop,
    "demo": partial(read_cub, name="demo"),
}


def read_dataset(name: str, dataset_dir: Path) -> DatasetIndex:
    """Parse the index files of `dataset_dir` in the official layout of dataset `name`.

    Only the index files are read: images are neither opened nor checked for existence (see
    antimetric.data.manifest.prepare for that). A missing or malformed layout raises DatasetLayoutError.
    """
    reader = READERS.get(name)
    if reader is None:
        raise DatasetLayoutError(f"unknown dataset {name!r}; valid names: {', '.join(READERS)}")
    return reader(Path(dataset_dir))
