"""Reading a dataset folder in its official layout into a DatasetIndex.

One module per layout (cub, cars, sop, inshop), each exporting READER; `layout` holds what they share. A user's
own images are read by `image_folder` (class subfolders) and `oml_table` (open-metric-learning's table); `source`
says which reader a dataset takes and where its manifest lives.
Which dataset a reader serves is said by its row in antimetric.data.table (the demo is kept as an
open-metric-learning table: oml_table's READER reads it under its own name), and every row's reader module is
imported here.
"""

from __future__ import annotations

import dataclasses
from importlib import import_module
from pathlib import Path

from antimetric.data.readers.layout import Reader
from antimetric.data.records import DatasetIndex
from antimetric.data.table import TABLE
from antimetric.errors import DatasetLayoutError

_BY_DATASET: dict[str, Reader] = {
    row.name: import_module(f"{__name__}.{row.reader}").READER for row in TABLE.values()
}


def read_dataset(name: str, dataset_dir: Path) -> DatasetIndex:
    """Parse the index files of `dataset_dir` in the official layout of dataset `name`.

    Only the index files are read: images are neither opened nor checked for existence (see
    antimetric.data.manifest.prepare.prepare for that). A missing or malformed layout raises DatasetLayoutError.
    """
    reader = _reader(name)
    index = reader.read(Path(dataset_dir), name)
    return index if index.sources else dataclasses.replace(index, sources=reader.spec.index_files)


def _reader(name: str) -> Reader:
    reader = _BY_DATASET.get(name)
    if reader is None:
        raise DatasetLayoutError(f"unknown dataset {name!r}; valid names: {', '.join(_BY_DATASET)}")
    return reader
