"""Reader for the Stanford Online Products layout, as Stanford_Online_Products.zip unpacks."""

from __future__ import annotations

from pathlib import Path

from antimetric.data.readers.layout import LayoutFolder, LayoutSpec, Reader, open_layout
from antimetric.data.records import TEST, TRAIN, DatasetIndex, ImageRecord

TRAIN_LIST, TEST_LIST = "Ebay_train.txt", "Ebay_test.txt"
_COLUMNS = ("image_id", "class_id", "super_class_id", "path")
_SPLIT_OF_LIST = {TRAIN_LIST: TRAIN, TEST_LIST: TEST}

SOP_LAYOUT = LayoutSpec(
    title="Stanford Online Products",
    contents=(TRAIN_LIST, TEST_LIST, "<category>_final/"),
    source=(
        "download Stanford_Online_Products.zip from https://cvgl.stanford.edu/projects/lifted_struct/ "
        "and extract it into {dir}"
    ),
    marker=TRAIN_LIST,
)


def read_sop(dataset_dir: Path, name: str = "sop") -> DatasetIndex:
    """Index a Stanford Online Products folder: Ebay_train.txt gives the train split, Ebay_test.txt the test."""
    folder = open_layout(name, dataset_dir, SOP_LAYOUT)
    for relative in _SPLIT_OF_LIST:
        folder.require(relative)
    records = [
        record for relative, split in _SPLIT_OF_LIST.items() for record in _read_list(folder, relative, split)
    ]
    return DatasetIndex(name=name, root=folder.root, records=records)


def _read_list(folder: LayoutFolder, relative: str, split: str) -> list[ImageRecord]:
    rows = folder.rows(relative, _COLUMNS)
    if rows and rows[0][1][0].lower() == _COLUMNS[0]:
        rows = rows[1:]
    records = []
    for line_no, (image_id, class_id, super_class_id, path) in rows:
        folder.integer(relative, line_no, "image_id", image_id)
        folder.integer(relative, line_no, "super_class_id", super_class_id)
        label = folder.integer(relative, line_no, "class_id", class_id)
        records.append(ImageRecord(path=folder.image_path(relative, line_no, path), label=label, split=split))
    return records


READER = Reader(read=read_sop, spec=SOP_LAYOUT)
