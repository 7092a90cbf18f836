"""Reader for the CUB-200-2011 layout, as CUB_200_2011.tgz unpacks."""

from __future__ import annotations

from pathlib import Path

from antimetric.data.readers.layout import LayoutFolder, LayoutSpec, Reader, open_layout, split_by_class_halves
from antimetric.data.records import Box, DatasetIndex, ImageRecord

IMAGES, LABELS, BOXES, IMAGE_DIR = "images.txt", "image_class_labels.txt", "bounding_boxes.txt", "images/"

CUB_LAYOUT = LayoutSpec(
    title="CUB-200-2011",
    contents=(IMAGES, LABELS, BOXES, IMAGE_DIR),
    source=(
        "download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ "
        "and extract it into {dir}"
    ),
    marker=IMAGES,
)


def read_cub(dataset_dir: Path, name: str = "cub") -> DatasetIndex:
    """Index a CUB-200-2011 folder; classes split in halves (1-100 train, 101-200 test), boxes as Box."""
    folder = open_layout(name, dataset_dir, CUB_LAYOUT)
    for relative in CUB_LAYOUT.contents:
        folder.require(relative)
    paths = _id_table(folder, IMAGES, ("<image_id>", "<image_name>"))
    labels = _id_table(folder, LABELS, ("<image_id>", "<class_id>"))
    boxes = _id_table(folder, BOXES, ("<image_id>", "<x>", "<y>", "<width>", "<height>"))

    images = []
    for image_id, (path_line, (relative,)) in sorted(paths.items()):
        label_line, (label_text,) = _row_for(folder, labels, image_id, LABELS)
        label = folder.integer(LABELS, label_line, "class_id", label_text)
        box = _xywh_box(folder, *_row_for(folder, boxes, image_id, BOXES))
        images.append((IMAGE_DIR + folder.image_path(IMAGES, path_line, relative), label, box))
    halves = split_by_class_halves(label for _, label, _ in images)
    records = [ImageRecord(path=path, label=label, split=halves[label], box=box) for path, label, box in images]
    return DatasetIndex(name=name, root=folder.root, records=records)


def _id_table(folder: LayoutFolder, relative: str, columns: tuple[str, ...]) -> dict[int, tuple[int, list[str]]]:
    """Rows of an '<image_id> ...' file keyed by image id, as (line number, remaining fields)."""
    table: dict[int, tuple[int, list[str]]] = {}
    for line_no, fields in folder.rows(relative, columns):
        image_id = folder.integer(relative, line_no, "image_id", fields[0])
        if image_id in table:
            raise folder.malformed(relative, line_no, f"image_id {image_id} repeats line {table[image_id][0]}")
        table[image_id] = (line_no, fields[1:])
    return table


def _row_for(
    folder: LayoutFolder, table: dict[int, tuple[int, list[str]]], image_id: int, relative: str
) -> tuple[int, list[str]]:
    try:
        return table[image_id]
    except KeyError:
        raise folder.malformed(relative, None, f"no row for image_id {image_id} of {IMAGES}") from None


def _xywh_box(folder: LayoutFolder, line_no: int, fields: list[str]) -> Box:
    x, y, width, height = (
        folder.number(BOXES, line_no, column, text)
        for column, text in zip(("x", "y", "width", "height"), fields, strict=True)
    )
    shown = f"x={x:g} y={y:g} width={width:g} height={height:g}"
    return folder.box(BOXES, line_no, (x, y, x + width, y + height), shown)


READER = Reader(read=read_cub, spec=CUB_LAYOUT)
