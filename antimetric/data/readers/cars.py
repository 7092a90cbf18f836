"""Reader for the CARS196 layout: cars_annos.mat beside the car_ims/ folder of car_ims.tgz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from antimetric.data.readers.layout import LayoutFolder, LayoutSpec, Reader, open_layout, split_by_class_halves
from antimetric.data.records import DatasetIndex, ImageRecord

ANNOTATIONS, IMAGE_DIR = "cars_annos.mat", "car_ims/"
_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class")

CARS_LAYOUT = LayoutSpec(
    title="CARS196",
    contents=(ANNOTATIONS, IMAGE_DIR),
    source=(
        "download car_ims.tgz and cars_annos.mat from https://ai.stanford.edu/~jkrause/cars/car_dataset.html, "
        "extract car_ims.tgz into {dir} and put cars_annos.mat beside car_ims/"
    ),
    marker=ANNOTATIONS,
)


def read_cars(dataset_dir: Path, name: str = "car") -> DatasetIndex:
    """Index a CARS196 folder; classes split in halves (1-98 train, 99-196 test), ignoring the 'test' field."""
    folder = open_layout(name, dataset_dir, CARS_LAYOUT)
    annotations = _annotations(folder, folder.require(ANNOTATIONS))
    folder.require(IMAGE_DIR)

    images = []
    for number, entry in enumerate(annotations, start=1):
        values = {field: _scalar(folder, entry[field], number, field) for field in _FIELDS}
        row = f"annotation {number}: "
        path = folder.image_path(ANNOTATIONS, None, str(values["relative_im_path"]), row=row)
        label = _integer(folder, values["class"], number)
        corners = tuple(
            _number(folder, values[field], number, field) for field in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
        )
        shown = "(" + ", ".join(f"{value:g}" for value in corners) + ")"
        box = folder.box(ANNOTATIONS, None, corners, shown, row=row)
        images.append((path, label, box))
    halves = split_by_class_halves(label for _, label, _ in images)
    records = [ImageRecord(path=path, label=label, split=halves[label], box=box) for path, label, box in images]
    return DatasetIndex(name=name, root=folder.root, records=records)


def _annotations(folder: LayoutFolder, path: Path) -> np.ndarray:
    """The 'annotations' struct array as a flat array of records, whatever shape loadmat gives it."""
    try:
        mat = loadmat(path)
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError... on a damaged file
        raise folder.malformed(
            ANNOTATIONS, None, f"scipy.io.loadmat cannot read it ({type(error).__name__})"
        ) from None
    annotations = mat.get("annotations")
    if annotations is None:
        raise folder.malformed(ANNOTATIONS, None, "no 'annotations' variable")
    annotations = np.asarray(annotations).ravel()
    missing = [field for field in _FIELDS if field not in (annotations.dtype.names or ())]
    if missing:
        raise folder.malformed(ANNOTATIONS, None, f"'annotations' lacks the fields {', '.join(missing)}")
    return annotations


def _scalar(folder: LayoutFolder, value: object, number: int, field: str) -> object:
    """The one value in a MATLAB field: loadmat wraps scalars as 1x1 arrays and strings as 1-element arrays."""
    array = np.asarray(value).ravel()
    if array.size != 1:
        raise folder.malformed(
            ANNOTATIONS, None, f"annotation {number} field {field} holds {array.size} values, not 1"
        )
    return array[0].item() if isinstance(array[0], np.generic) else array[0]


def _number(folder: LayoutFolder, value: object, number: int, field: str) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise folder.malformed(ANNOTATIONS, None, f"annotation {number} has a non-numeric {field} {value!r}")


def _integer(folder: LayoutFolder, value: object, number: int) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise folder.malformed(ANNOTATIONS, None, f"annotation {number} has a non-integer class {value!r}")


READER = Reader(read=read_cars, spec=CARS_LAYOUT)
