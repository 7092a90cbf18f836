"""Reader for the DeepFashion In-shop Clothes Retrieval layout: Eval/list_eval_partition.txt and Img/img/."""

from __future__ import annotations

import re
from pathlib import Path

from antimetric.data.readers.layout import LayoutSpec, Reader, open_layout
from antimetric.data.records import GALLERY, QUERY, TRAIN, DatasetIndex, ImageRecord

PARTITION, IMAGE_DIR = "Eval/list_eval_partition.txt", "Img/"
_COLUMNS = ("image_name", "item_id", "evaluation_status")
_SPLIT_OF_STATUS = {"train": TRAIN, "query": QUERY, "gallery": GALLERY}

INSHOP_LAYOUT = LayoutSpec(
    title="In-shop Clothes Retrieval",
    contents=(PARTITION, IMAGE_DIR + "img/"),
    source=(
        "download Eval/list_eval_partition.txt and Img/img.zip from "
        "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html into {dir} "
        "and extract img.zip inside Img/"
    ),
    marker=PARTITION,
)


def read_inshop(dataset_dir: Path, name: str = "isc") -> DatasetIndex:
    """Index an In-shop folder: splits train/query/gallery from the partition file, label = item id number.

    Record paths are relative to the layout's root, so they read 'Img/img/WOMEN/...'.
    """
    folder = open_layout(name, dataset_dir, INSHOP_LAYOUT)
    folder.require(IMAGE_DIR + "img/")
    path = folder.require(PARTITION)
    # The file starts with the image count and a header line before the rows.
    rows = folder.rows(PARTITION, _COLUMNS, skip=2)
    declared_line, declared = _first_line(path)
    declared_count = folder.integer(PARTITION, declared_line, "image count", declared)
    if declared_count != len(rows):
        raise folder.malformed(PARTITION, declared_line, f"declares {declared_count} images but lists {len(rows)}")

    records = []
    for line_no, (image_name, item_id, status) in rows:
        digits = re.sub(r"\D", "", item_id)
        if not digits:
            raise folder.malformed(PARTITION, line_no, f"item_id {item_id!r} has no digits")
        split = _SPLIT_OF_STATUS.get(status.lower())
        if split is None:
            raise folder.malformed(
                PARTITION, line_no, f"evaluation_status {status!r} is not one of {', '.join(_SPLIT_OF_STATUS)}"
            )
        path = IMAGE_DIR + folder.image_path(PARTITION, line_no, image_name)
        records.append(ImageRecord(path=path, label=int(digits), split=split))
    return DatasetIndex(name=name, root=folder.root, records=records)


def _first_line(path: Path) -> tuple[int, str]:
    """The first non-blank line's number and text (stripped)."""
    with path.open(encoding="utf-8-sig") as lines:
        for line_no, line in enumerate(lines, start=1):
            if line.strip():
                return line_no, line.strip()
    return 1, ""


READER = Reader(read=read_inshop, spec=INSHOP_LAYOUT)
