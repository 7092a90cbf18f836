"""Reader for open-metric-learning's table format: one row per image, in a .csv or a .parquet file.

Columns: `label`, `path` (relative to the images' root folder) and `split` (train; test, or validation as
open-metric-learning names it) are required; `is_query`, `is_gallery`, `category` and the box `x_1, x_2, y_1,
y_2` (pixels; x_1, y_1 the upper-left corner) are optional, and other columns are ignored. Every path is
checked here to be an image file inside the root (by its first bytes, not decoded), so that a typo in the
table is one line naming the row rather than an image skipped later.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from antimetric.data.readers.image_folder import SIGNATURE_BYTES, has_image_signature
from antimetric.data.readers.layout import LayoutSpec, Reader, box_problem, path_problem, posix_path
from antimetric.data.records import GALLERY, QUERY, TEST, TRAIN, Box, DatasetIndex, ImageRecord
from antimetric.errors import DatasetLayoutError

REQUIRED = ("label", "path", "split")
BOX_COLUMNS = ("x_1", "y_1", "x_2", "y_2")  # in Box order: left, upper, right, lower
OPTIONAL = ("is_query", "is_gallery", "category", "x_1", "x_2", "y_1", "y_2")
_SPLITS = {"train": TRAIN, "test": TEST, "validation": TEST}
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SHOWN_CHARS = 80
_FLAGS = "is_query, is_gallery"


@dataclass(frozen=True)
class _Row:
    where: str  # 'line 3' of a CSV (the header is line 1), 'row 2' of a parquet table (1-based)
    cells: dict[str, str]  # column -> the value as text, '' when empty


@dataclass(frozen=True)
class _Entry:
    row: _Row
    path: str
    label: str  # as written
    split: str  # TRAIN or TEST; QUERY/GALLERY are decided once all test rows are read
    box: Box | None
    category: str | None


@dataclass(frozen=True)
class _Table:
    name: str
    file: Path

    def error(self, problem: str, row: _Row | None = None, column: str | None = None) -> DatasetLayoutError:
        where = f"{row.where} of {self.file}" if row is not None else str(self.file)
        return DatasetLayoutError(f"{self.name}: {where}{f', column {column}' if column else ''}: {problem}")


def read_oml_table(table: Path, root: Path, name: str, *, allow_shared_labels: bool = False) -> DatasetIndex:
    """Index the images a table names. Test rows are TEST (leave-one-out) when is_query/is_gallery are not
    given or every test row is both; QUERY/GALLERY when each is exactly one. Integer labels are kept, other
    labels become positions among the sorted distinct labels; class_names keeps them as written.

    Train and test classes must be disjoint, as in the benchmarks, unless allow_shared_labels.
    """
    table, root = Path(table).expanduser(), Path(root).expanduser().resolve()
    source = _Table(name, table)
    if not root.is_dir():
        raise source.error(f"its image folder {root} is not a folder; pass the folder the table's paths start from")
    columns, rows = _read(source)
    _check_columns(source, columns)
    boxed = BOX_COLUMNS[0] in columns
    seen: dict[str, str] = {}
    entries = [_Entry(row, _image_path(source, row, root, seen), _label(source, row), _split(source, row),
                      _box(source, row) if boxed else None, row.cells.get("category", "").strip() or None)
               for row in rows]
    _check_protocol(source, entries, allow_shared_labels)
    test_splits = iter(_test_splits(source, [e.row for e in entries if e.split == TEST]))
    label_of = _labels([e.label for e in entries])
    records = [ImageRecord(path=e.path, label=label_of[e.label], box=e.box, category=e.category,
                           split=TRAIN if e.split == TRAIN else next(test_splits)) for e in entries]
    resolved = table.resolve()
    shown = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)
    return DatasetIndex(name=name, root=root, records=records,
                        class_names={label: text for text, label in label_of.items()}, sources=(shown,))


def _read(source: _Table) -> tuple[list[str], list[_Row]]:
    suffix = source.file.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise source.error("is neither a .csv nor a .parquet file; save the table in one of these two forms")
    if not source.file.is_file():
        raise source.error("does not exist" if not source.file.exists() else "is not a file")
    return _read_csv(source) if suffix == ".csv" else _read_parquet(source)


def _read_csv(source: _Table) -> tuple[list[str], list[_Row]]:
    rows: list[_Row] = []
    try:
        with source.file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise source.error(f"is empty; its first line must name the columns, at least {', '.join(REQUIRED)}")
            columns = [column.strip() for column in header]
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                row = _Row(f"line {reader.line_num}", dict(zip(columns, cells)))
                if len(cells) != len(columns):
                    raise source.error(f"has {len(cells)} fields where the header names {len(columns)} columns; "
                                       "give every row one field per column (quote a field holding a comma)", row)
                rows.append(row)
    except UnicodeDecodeError:
        raise source.error("cannot be read as UTF-8 text; save the table as UTF-8") from None
    except csv.Error as error:
        raise source.error(f"line {reader.line_num} is not valid CSV ({error}); fix its quoting") from None
    except OSError as error:
        raise source.error(f"cannot be read ({error.strerror})") from None
    return columns, rows


def _read_parquet(source: _Table) -> tuple[list[str], list[_Row]]:
    """Read with pyarrow, the parquet engine pandas uses; the core does not import pandas (tests/test_layering)."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise source.error("reading a .parquet table needs pyarrow: pip install pyarrow, or save the table as "
                           ".csv") from None
    try:
        data = pyarrow.parquet.read_table(source.file)
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        shown = " ".join(str(error).split())[:200]
        raise source.error(f"cannot be read as parquet ({shown}); save it again, or as .csv") from None
    columns = [str(column).strip() for column in data.column_names]
    values = [[_cell(value) for value in column.to_pylist()] for column in data.columns]
    rows = [_Row(f"row {i + 1}", dict(zip(columns, cells))) for i, cells in enumerate(zip(*values))]
    return columns, rows


def _cell(value: object) -> str:
    """A parquet value as the CSV would write it: empty for null or NaN, integral floats without '.0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_columns(source: _Table, columns: list[str]) -> None:
    missing = [column for column in REQUIRED if column not in columns]
    if missing:
        raise source.error(f"misses the column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}); "
                           f"a table needs {', '.join(REQUIRED)}, optionally {', '.join(OPTIONAL)}")
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        raise source.error(f"names the column(s) {', '.join(repeated)} twice; keep one of each")
    boxes = [column for column in BOX_COLUMNS if column in columns]
    if boxes and len(boxes) < len(BOX_COLUMNS):
        absent = [column for column in BOX_COLUMNS if column not in columns]
        raise source.error(f"has the box column(s) {', '.join(boxes)} but not {', '.join(absent)}; "
                           "give all four of x_1, x_2, y_1, y_2 or none")


def _split(source: _Table, row: _Row) -> str:
    text = row.cells["split"]
    split = _SPLITS.get(text.strip().lower())
    if split is None:
        raise source.error(f"{_shown(text)} is not a split; write train, or test (validation also means test)",
                           row, "split")
    return split


def _label(source: _Table, row: _Row) -> str:
    text = row.cells["label"].strip()
    if not text:
        raise source.error("the label is empty; give every row its class", row, "label")
    return text


def _image_path(source: _Table, row: _Row, root: Path, seen: dict[str, str]) -> str:
    """The row's path, normalised; raise unless it names an image file inside root not named before."""
    text = row.cells["path"]
    problem = path_problem(text)
    if problem is not None:
        raise source.error(f"{_shown(text)} {problem}", row, "path")
    path = posix_path(text)
    if path in seen:
        raise source.error(f"{_shown(text)} repeats the path of {seen[path]}; remove one of the two rows", row, "path")
    seen[path] = row.where
    problem = _file_problem(root, path)
    if problem is not None:
        raise source.error(f"{_shown(text)} {problem}", row, "path")
    return path


def _file_problem(root: Path, path: str) -> str | None:
    """Why root/path is not an image file inside root, or None; the file's first bytes are read, not decoded."""
    file = root / path
    resolved = file.resolve()
    if not os.path.lexists(file) or not resolved.exists():
        return f"does not exist in {root}; fix the path (relative to that folder) or remove the row"
    if not resolved.is_relative_to(root):
        return f"is a symbolic link leading out of {root}; copy the image into that folder"
    if not resolved.is_file():
        return "is not a regular file (a folder, pipe or device); name an image file"
    try:
        with resolved.open("rb") as handle:
            head = handle.read(SIGNATURE_BYTES)
    except OSError as error:
        return f"cannot be read ({error.strerror}); make it readable"
    if not has_image_signature(head):
        return "is not an image (neither JPEG, PNG, GIF, BMP, WEBP, TIFF nor PPM/PGM by its first bytes)"
    return None


def _box(source: _Table, row: _Row) -> Box | None:
    texts = [row.cells[column].strip() for column in BOX_COLUMNS]
    if not any(texts):
        return None
    values = []
    for column, text in zip(BOX_COLUMNS, texts):
        try:
            values.append(float(text))
        except ValueError:
            raise source.error(f"{_shown(text)} is not a number; write the box in pixels, or leave all four box "
                               "columns empty for no box", row, column) from None
    box = (values[0], values[1], values[2], values[3])
    problem = box_problem(box)
    if problem is not None:
        shown = " ".join(f"{column}={value:g}" for column, value in zip(BOX_COLUMNS, values))
        raise source.error(f"the box {shown} {problem}; x_1, y_1 is its upper-left corner and x_2, y_2 its "
                           "lower-right, in pixels", row, "x_1, x_2, y_1, y_2")
    return box


def _check_protocol(source: _Table, entries: list[_Entry], allow_shared_labels: bool) -> None:
    """Both splits present, 2 training classes at least, and (unless allowed) no class in both."""
    train = {e.label: e.row for e in reversed(entries) if e.split == TRAIN}  # label -> its first row
    test = {e.label: e.row for e in reversed(entries) if e.split == TEST}
    if not train:
        raise source.error("has no train rows (split train); training needs some classes of its own")
    if not test:
        raise source.error("has no test rows (split test or validation); mark the rows of the classes to "
                           "evaluate on")
    if len(train) < 2:
        raise source.error(f"its train rows hold {len(train)} class; training needs at least 2 (it groups "
                           "classes into meta-classes): add train classes")
    shared = next((e for e in entries if e.label in train and e.label in test), None)
    if shared is not None and not allow_shared_labels:
        raise source.error(
            f"label {_shown(shared.label)} is in train rows ({train[shared.label].where}) and test rows "
            f"({test[shared.label].where}); the protocol is class-disjoint: give each class to one split, or "
            "pass --allow-shared-labels to allow it"
        )


def _test_splits(source: _Table, rows: list[_Row]) -> list[str]:
    """TEST for every test row (leave-one-out), or QUERY/GALLERY each; an empty flag reads as 0 once any is set."""
    flags = [(_flag(source, row, "is_query"), _flag(source, row, "is_gallery")) for row in rows]
    if all(query is None and gallery is None for query, gallery in flags):
        return [TEST] * len(rows)
    kinds = []
    for row, (query, gallery) in zip(rows, flags):
        if not query and not gallery:
            raise source.error("the test row is neither query nor gallery; set is_query and/or is_gallery to 1 "
                               "(or leave both empty on every row for leave-one-out)", row, _FLAGS)
        kinds.append(TEST if query and gallery else QUERY if query else GALLERY)
    both = kinds[0] == TEST
    for row, kind in zip(rows, kinds):
        if (kind == TEST) != both:
            both_kinds = "both query and gallery"
            this, first = (f"only {kind}", both_kinds) if both else (both_kinds, f"only {kinds[0]}")
            raise source.error(f"the test row is {this} while {rows[0].where} is {first}; either "
                               "every test row is both query and gallery (leave-one-out) or each is exactly one "
                               "of the two", row, _FLAGS)
    for needed, column in ((QUERY, "is_query"), (GALLERY, "is_gallery")):
        if not both and needed not in kinds:
            raise source.error(f"no test row is a {needed} ({column} 1); mark the {needed} images")
    return kinds


def _flag(source: _Table, row: _Row, column: str) -> bool | None:
    text = row.cells.get(column, "").strip()
    if not text:
        return None
    if text.lower() in _TRUE or text.lower() in _FALSE:
        return text.lower() in _TRUE
    raise source.error(f"{_shown(text)} is not a boolean; write 1/0, true/false or yes/no", row, column)


def _labels(texts: list[str]) -> dict[str, int]:
    """Label text -> label: the integer written when every label is one (and no two are equal as integers),
    else the position among the sorted distinct texts."""
    distinct = sorted(set(texts))
    as_int = {text: int(text) for text in distinct if _INTEGER.fullmatch(text)}
    if len(as_int) == len(distinct) and len(set(as_int.values())) == len(distinct):
        return as_int
    return {text: i for i, text in enumerate(distinct)}


def _shown(text: str) -> str:
    """Text quoted for a one-line message, shortened."""
    text = text.strip()
    return repr(text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "...")


def _read_dataset_table(dataset_dir: Path, name: str) -> DatasetIndex:
    """A dataset of the dataset table kept as a table: `<dataset folder>/<name>.csv`, its paths relative to it."""
    table = Path(dataset_dir) / f"{name}.csv"
    if not table.is_file():
        raise DatasetLayoutError(f"{name}: missing {table.name} in {dataset_dir} "
                                 f"({TABLE_LAYOUT.describe(Path(dataset_dir))})")
    return read_oml_table(table, Path(dataset_dir), name)


# A row of antimetric.data.table whose reader is this module (the demo): its folder holds <name>.csv.
TABLE_LAYOUT = LayoutSpec(title="open-metric-learning table", contents=("<name>.csv",),
                          source="a table with columns label, path, split, paths relative to {dir}",
                          marker="<name>.csv")
READER = Reader(read=_read_dataset_table, spec=TABLE_LAYOUT)
