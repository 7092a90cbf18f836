"""A user's own labelled images: a folder of class subfolders (read_image_folder, split_test_classes) and a table in
open-metric-learning's columns (read_oml_table), on real images written here, and every way such data is refused."""
import csv
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from antimetric.data.readers.image_folder import IMAGE_SUFFIXES, read_image_folder, scan_images, split_test_classes
from antimetric.data.readers.oml_table import read_oml_table
from antimetric.data.records import GALLERY, QUERY, TEST, TRAIN, DatasetIndex, ImageRecord
from antimetric.errors import ConfigError, DatasetLayoutError

ORIENTATION = 0x0112  # the EXIF tag


def _image(path: Path, kind: str = "png", size: int = 24) -> Path:
    """A real image: RGB PNG, JPEG with an EXIF orientation tag, grayscale (L) PNG or RGBA PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = sum(path.name.encode()) % 256
    if kind == "jpeg":
        image = Image.new("RGB", (size, size + 8), (colour, 40, 200))
        exif = Image.Exif()
        exif[ORIENTATION] = 6
        image.save(path, "JPEG", exif=exif)
    else:
        mode, fill = {"png": ("RGB", (colour, 90, 10)), "gray": ("L", colour), "rgba": ("RGBA", (colour, 5, 5, 128))}[kind]
        Image.new(mode, (size, size), fill).save(path, "PNG")
    return path


def _one_line_error(error_type, call, *needles: str) -> str:
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# --- a folder of class subfolders -------------------------------------------------------------------------------

def _class_folder(tmp_path: Path) -> Path:
    root, outside = tmp_path / "mine", tmp_path / "outside"
    _image(root / "cat" / "a.png")
    _image(root / "cat" / "b.jpg", "jpeg")
    _image(root / "cat" / ".hidden.png")
    _image(root / "cat" / ".thumbs" / "t.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    _image(root / "dog" / "c.png", "gray")
    _image(root / "dog" / "puppies" / "d.png", "rgba")
    _image(root / "bird" / "e.jpg", "jpeg")
    _image(root / "stray.png")  # in the root itself: no class
    _image(outside / "x.png")
    _image(outside / "more" / "y.png")
    (root / "cat" / "out.png").symlink_to(outside / "x.png")
    (root / "cat" / "outdir").symlink_to(outside / "more", target_is_directory=True)
    (root / "dog" / "inside.png").symlink_to(root / "cat" / "a.png")
    return root


def test_image_folder_labels_each_image_by_its_first_level_folder(tmp_path):
    root = _class_folder(tmp_path)
    index = read_image_folder(tmp_path / "mine", "mine")

    assert index.name == "mine" and index.root == root.resolve() and index.root.is_absolute()
    assert index.class_names == {0: "bird", 1: "cat", 2: "dog"}
    assert [(r.path, r.label, r.split) for r in index.records] == [
        ("bird/e.jpg", 0, TRAIN), ("cat/a.png", 1, TRAIN), ("cat/b.jpg", 1, TRAIN),
        ("dog/c.png", 2, TRAIN), ("dog/inside.png", 2, TRAIN), ("dog/puppies/d.png", 2, TRAIN),
    ]
    assert all(r.box is None and r.category is None for r in index.records)
    assert index.sources == (".", "bird", "cat", "dog", "dog/puppies")


def test_scan_images_moved_and_still_importable_from_the_gallery(tmp_path):
    from antimetric.retrieval import gallery_images

    assert gallery_images.scan_images is scan_images and gallery_images.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    root = _class_folder(tmp_path).resolve()
    assert scan_images(root) == ["bird/e.jpg", "cat/a.png", "cat/b.jpg", "dog/c.png", "dog/inside.png",
                                 "dog/puppies/d.png", "stray.png"]


def test_image_folder_missing_or_a_file(tmp_path):
    _one_line_error(DatasetLayoutError, lambda: read_image_folder(tmp_path / "nope", "nope"),
                    str(tmp_path / "nope"), "does not exist", "one subfolder of images per class")
    _image(tmp_path / "file.png")
    _one_line_error(DatasetLayoutError, lambda: read_image_folder(tmp_path / "file.png", "file"),
                    str(tmp_path / "file.png"), "is not a folder")


def test_image_folder_without_class_subfolders(tmp_path):
    _image(tmp_path / "flat" / "a.png")
    (tmp_path / "flat" / "empty").mkdir()
    _one_line_error(DatasetLayoutError, lambda: read_image_folder(tmp_path / "flat", "flat"),
                    str(tmp_path / "flat"), "no class subfolder holding an image", "/<class>/<image>.jpg")


def test_image_folder_with_an_empty_class(tmp_path):
    _image(tmp_path / "mine" / "cat" / "a.png")
    _image(tmp_path / "mine" / "dog" / ".hidden.png")  # hidden: not an image of the class
    _one_line_error(DatasetLayoutError, lambda: read_image_folder(tmp_path / "mine", "mine"),
                    str(tmp_path / "mine" / "dog"), "holds no image", "remove it or add images")


def _named_classes(root: Path, names: list[str]) -> DatasetIndex:
    for name in names:
        _image(root / name / "a.png", size=16)
        _image(root / name / "b.png", size=16)
    return read_image_folder(root, root.name)


def test_split_test_classes_draws_whole_classes_by_name_and_seed(tmp_path):
    names = [f"class{i:02d}" for i in range(10)]
    index = _named_classes(tmp_path / "mine", names)
    split = split_test_classes(index, 0.3, seed=7)

    expected = {names[i] for i in np.random.default_rng(7).permutation(10)[:3]}
    test = {split.class_names[r.label] for r in split.records if r.split == TEST}
    train = {split.class_names[r.label] for r in split.records if r.split == TRAIN}
    assert test == expected and train == set(names) - expected
    assert {r.split for r in split.records} == {TRAIN, TEST}
    assert [replace(r, split=TRAIN) for r in split.records] == index.records
    assert (split.name, split.root, split.class_names, split.sources) == (
        index.name, index.root, index.class_names, index.sources)
    assert all(r.split == TRAIN for r in index.records)  # the index given is left as it was
    draws = {frozenset(r.label for r in split_test_classes(index, 0.3, seed).records if r.split == TEST)
             for seed in range(6)}
    assert len(draws) > 1


def test_split_test_classes_ignores_creation_order_and_label_numbers(tmp_path):
    names = ["zebra", "ant", "mole", "heron", "crab", "owl", "eel"]
    forward = _named_classes(tmp_path / "forward", names)
    backward = _named_classes(tmp_path / "backward", names[::-1])
    relabelled = DatasetIndex(  # the same classes under other label numbers, records in another order
        name="t", root=tmp_path, class_names={10 + i: name for i, name in enumerate(names)},
        records=[ImageRecord(f"{name}/a.png", 10 + i, TRAIN) for i, name in reversed(list(enumerate(names)))])

    def test_names(index: DatasetIndex) -> set[str]:
        return {index.class_names[r.label] for r in split_test_classes(index, 0.5, seed=3).records if r.split == TEST}

    assert test_names(forward) == test_names(backward) == test_names(relabelled)
    assert len(test_names(forward)) == 4  # round(3.5)


@pytest.mark.parametrize("n_classes, fraction", [(5, 0.2), (5, 0.9), (3, 0.5)])
def test_split_test_classes_refuses_fewer_than_two_classes_a_side(tmp_path, n_classes, fraction):
    index = _named_classes(tmp_path / "mine", [f"c{i}" for i in range(n_classes)])
    _one_line_error(ConfigError, lambda: split_test_classes(index, fraction, seed=0),
                    "mine", f"of {n_classes} classes", "--test-classes", "at least 2")


# --- open-metric-learning's table ------------------------------------------------------------------------------

COLUMNS = ["label", "path", "split", "is_query", "is_gallery", "category", "x_1", "x_2", "y_1", "y_2", "note"]
ROWS = [  # line 2 onwards of table.csv
    ["0", "a/1.png", "train", "", "", "cats", "1", "20", "2", "22", "ignored"],
    ["0", "a/2.jpg", "train", "", "", "cats", "", "", "", "", ""],
    ["1", "b/3.png", "train", "", "", "", "", "", "", "", ""],
    ["1", "b/4.png", "train", "", "", "", "", "", "", "", ""],
    ["2", "c/5.png", "validation", "1", "1", "", "", "", "", "", ""],
    ["2", "c/6.png", "test", "true", "True", "", "", "", "", "", ""],
    ["3", "d/7.jpg", "test", "yes", "1", "dogs", "0.5", "10.5", "0", "9", ""],
    ["3", "d/8.png", "Test", "1", "1", "", "", "", "", "", ""],
]
KINDS = {"1.png": "png", "2.jpg": "jpeg", "3.png": "gray", "4.png": "rgba", "7.jpg": "jpeg"}


def _write_csv(path: Path, rows: list[list[str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([columns, *rows])
    return path


def _table_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for row in ROWS:
        _image(root / row[1], KINDS.get(Path(row[1]).name, "png"))
    _image(tmp_path / "outside.png")
    return root


def _rows() -> list[list[str]]:
    return [list(row) for row in ROWS]


def _column(rows: list[list[str]], column: str, values: dict[int, str]) -> list[list[str]]:
    """`rows` with the cells of `column` in the rows numbered in `values` (0-based) replaced."""
    for i, value in values.items():
        rows[i][COLUMNS.index(column)] = value
    return rows


def test_oml_csv_reads_labels_splits_boxes_and_categories(tmp_path):
    root = _table_root(tmp_path)
    table = _write_csv(root / "table.csv", _rows())
    index = read_oml_table(table, root, "table")

    assert index.name == "table" and index.root == root.resolve() and index.sources == ("table.csv",)
    assert index.class_names == {0: "0", 1: "1", 2: "2", 3: "3"}
    assert [(r.path, r.label, r.split, r.box, r.category) for r in index.records] == [
        ("a/1.png", 0, TRAIN, (1.0, 2.0, 20.0, 22.0), "cats"), ("a/2.jpg", 0, TRAIN, None, "cats"),
        ("b/3.png", 1, TRAIN, None, None), ("b/4.png", 1, TRAIN, None, None),
        ("c/5.png", 2, TEST, None, None), ("c/6.png", 2, TEST, None, None),
        ("d/7.jpg", 3, TEST, (0.5, 0.0, 10.5, 9.0), "dogs"), ("d/8.png", 3, TEST, None, None),
    ]


def test_oml_csv_with_text_labels_query_gallery_a_bom_and_no_optional_columns(tmp_path):
    root = _table_root(tmp_path)
    rows = _column(_rows(), "label", {0: "tabby", 1: "tabby", 2: "collie", 3: "collie", 4: "7", 5: "7",
                                      6: "Ant", 7: "Ant"})
    rows = _column(rows, "is_query", {4: "1", 5: "0", 6: "1", 7: "false"})
    rows = _column(rows, "is_gallery", {4: "0", 5: "1", 6: "no", 7: "1"})
    table = root / "sub" / "t.csv"
    table.parent.mkdir()
    _write_csv(table, rows)
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    index = read_oml_table(table, root, "t")

    assert index.class_names == {0: "7", 1: "Ant", 2: "collie", 3: "tabby"}  # sorted as text
    assert [(r.label, r.split) for r in index.records] == [
        (3, TRAIN), (3, TRAIN), (2, TRAIN), (2, TRAIN), (0, QUERY), (0, GALLERY), (1, QUERY), (1, GALLERY)]
    assert index.sources == ("sub/t.csv",)

    bare = _write_csv(tmp_path / "bare.csv", [row[:3] for row in _rows()], COLUMNS[:3])  # outside the root
    index = read_oml_table(bare, root, "bare")
    assert [r.split for r in index.records] == [TRAIN] * 4 + [TEST] * 4
    assert all(r.box is None and r.category is None for r in index.records)
    assert index.sources == (str(bare.resolve()),)


def test_oml_symlink_inside_the_root_is_an_image(tmp_path):
    root = _table_root(tmp_path)
    (root / "c" / "link.png").symlink_to(root / "a" / "1.png")
    rows = _column(_rows(), "path", {5: "c/link.png"})
    assert read_oml_table(_write_csv(root / "t.csv", rows), root, "t").records[5].path == "c/link.png"


def test_oml_shared_labels_are_allowed_on_request(tmp_path):
    root = _table_root(tmp_path)
    table = _write_csv(root / "t.csv", _column(_rows(), "label", {4: "0"}))
    index = read_oml_table(table, root, "t", allow_shared_labels=True)
    assert [r.label for r in index.records if r.split == TEST] == [0, 2, 3, 3]


def _parquet(path: Path, rows: list[list[str]]) -> Path:
    """The rows with typed columns, as pandas writes them: labels as floats (an int column with a null), float
    boxes, booleans, nulls."""
    import pyarrow
    import pyarrow.parquet

    def column(name, convert):
        return [convert(row[COLUMNS.index(name)]) if row[COLUMNS.index(name)] else None for row in rows]

    flag = {"1": True, "true": True, "True": True, "yes": True, "0": False, "false": False, "no": False}.get
    data = {"label": column("label", float), "path": column("path", str), "split": column("split", str),
            "is_query": column("is_query", flag), "is_gallery": column("is_gallery", flag),
            **{name: column(name, float) for name in ("x_1", "x_2", "y_1", "y_2")}}
    pyarrow.parquet.write_table(pyarrow.table(data), path)
    return path


def test_oml_parquet_reads_as_the_csv(tmp_path):
    pytest.importorskip("pyarrow")
    root = _table_root(tmp_path)
    from_csv = read_oml_table(_write_csv(root / "t.csv", _rows()), root, "t")
    from_parquet = read_oml_table(_parquet(root / "t.parquet", _rows()), root, "t")
    assert from_parquet.records == [replace(r, category=None) for r in from_csv.records]
    assert from_parquet.class_names == from_csv.class_names and from_parquet.sources == ("t.parquet",)


def test_oml_parquet_names_a_bad_row_by_number(tmp_path):
    pytest.importorskip("pyarrow")
    root = _table_root(tmp_path)
    table = _parquet(root / "t.parquet", _set(x_1={2: "5"}, x_2={2: "1"}, y_1={2: "0"}, y_2={2: "9"})(
        _rows(), COLUMNS, root)[0])
    _one_line_error(DatasetLayoutError, lambda: read_oml_table(table, root, "t"),
                    f"row 3 of {table}, column x_1, x_2, y_1, y_2", "empty or inverted")


def test_oml_parquet_damaged(tmp_path):
    pytest.importorskip("pyarrow")
    root = _table_root(tmp_path)
    table = root / "t.parquet"
    table.write_bytes(b"PAR1 not a parquet file PAR1")
    _one_line_error(DatasetLayoutError, lambda: read_oml_table(table, root, "t"),
                    str(table), "cannot be read as parquet (", "or as .csv")


def test_oml_parquet_without_pyarrow(tmp_path, monkeypatch):
    root = _table_root(tmp_path)
    table = root / "t.parquet"
    table.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    _one_line_error(DatasetLayoutError, lambda: read_oml_table(table, root, "t"),
                    str(table), "pip install pyarrow", ".csv")


def test_oml_unreadable_image(tmp_path, monkeypatch):
    """chmod for a normal user; root reads through file modes, so the open is refused for it too."""
    root = _table_root(tmp_path)
    table = _write_csv(root / "t.csv", _rows())
    (root / "b" / "3.png").chmod(0)
    real_open = Path.open

    def refusing(self, *args, **kwargs):
        if self.name == "3.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing)
    _one_line_error(DatasetLayoutError, lambda: read_oml_table(table, root, "t"),
                    f"line 4 of {table}, column path", "cannot be read (Permission denied)")


def _drop(column: str):
    def drop(rows, columns, root):
        i = columns.index(column)
        return [row[:i] + row[i + 1:] for row in rows], columns[:i] + columns[i + 1:]
    return drop


def _set(**cells: dict[int, str]):
    """A change to the table: column=values, each {row (0-based): new cell}."""
    def change(rows, columns, root):
        for column, values in cells.items():
            rows = _column(rows, column, values)
        return rows, columns
    return change


TEST_ROWS = range(4, 8)
BAD_TABLES = {  # case -> (change to the table, what the message names beside the file)
    "missing column": (_drop("split"), ["misses the column(s) split", "found: label, path, is_query"]),
    "unknown split": (_set(split={2: "dev"}), ["line 4", "column split", "'dev' is not a split"]),
    "absent image": (_set(path={1: "a/nope.png"}), ["line 3", "column path", "does not exist"]),
    "folder as image": (_set(path={1: "a"}), ["line 3", "column path", "not a regular file"]),
    "not an image": (_set(path={6: "d/fake.png"}), ["line 8", "column path", "is not an image"]),
    "parent path": (_set(path={0: "../outside.png"}), ["line 2", "column path", "leaves the dataset folder"]),
    "absolute path": (lambda rows, columns, root: (_column(rows, "path", {0: str(root / "a" / "1.png")}), columns),
                      ["line 2", "column path", "is absolute"]),
    "symlink out": (_set(path={3: "b/out.png"}), ["line 5", "column path", "symbolic link leading out"]),
    "duplicate path": (_set(path={4: "./a/1.png"}), ["line 6", "column path", "repeats the path of line 2"]),
    "no train rows": (_set(split=dict.fromkeys(range(4), "test")), ["has no train rows"]),
    "no test rows": (_set(split=dict.fromkeys(TEST_ROWS, "train")), ["has no test rows"]),
    "one train class": (_set(label={2: "0", 3: "0"}), ["train rows hold 1 class", "at least 2"]),
    "shared label": (_set(label={6: "1", 7: "1"}), ["label '1'", "(line 4)", "(line 8)", "--allow-shared-labels"]),
    "box not a number": (_set(y_1={0: "two"}), ["line 2", "column y_1", "'two' is not a number"]),
    "box in part": (_set(x_2={1: "3"}), ["line 3", "column x_1", "'' is not a number"]),
    "box inverted": (_set(x_2={6: "0.4"}), ["line 8", "column x_1, x_2, y_1, y_2", "empty or inverted"]),
    "box columns in part": (_drop("y_2"), ["box column(s) x_1, y_1, x_2 but not y_2"]),
    "bad boolean": (_set(is_gallery={5: "maybe"}), ["line 7", "column is_gallery", "'maybe' is not a boolean"]),
    "neither query nor gallery": (_set(is_query={4: "0"}, is_gallery={4: ""}),
                                  ["line 6", "column is_query, is_gallery", "neither query nor gallery"]),
    "query and gallery mixed": (_set(is_gallery={6: "0"}),
                                ["line 8", "is only query while line 6 is both query and gallery"]),
    "no gallery": (_set(is_query=dict.fromkeys(TEST_ROWS, "1"), is_gallery=dict.fromkeys(TEST_ROWS, "0")),
                   ["no test row is a gallery"]),
    "empty label": (_set(label={3: " "}), ["line 5", "column label", "label is empty"]),
    "field count": (lambda rows, columns, root: (rows[:2] + [rows[2] + ["extra"]] + rows[3:], columns),
                    ["line 4", "has 12 fields where the header names 11"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_oml_bad_table(tmp_path, case):
    root = _table_root(tmp_path)
    (root / "d" / "fake.png").write_text("label,path\n")  # a text file with an image's name
    (root / "b" / "out.png").symlink_to(tmp_path / "outside.png")
    change, needles = BAD_TABLES[case]
    rows, columns = change(_rows(), list(COLUMNS), root)
    table = _write_csv(root / "t.csv", rows, columns)
    _one_line_error(DatasetLayoutError, lambda: read_oml_table(table, root, "t"), "t: ", str(table), *needles)


def test_oml_bad_files(tmp_path):
    root = _table_root(tmp_path)
    calls = {
        "does not exist": root / "absent.csv",
        "neither a .csv nor a .parquet": _write_csv(root / "t.tsv", _rows()),
        "cannot be read as UTF-8": root / "latin.csv",
        "is empty; its first line must name the columns": root / "empty.csv",
        "is not a file": root / "folder.csv",
    }
    (root / "folder.csv").mkdir()
    (root / "latin.csv").write_bytes("label,path,split\n0,caf\xe9.png,train\n".encode("latin-1"))
    (root / "empty.csv").write_text("")
    for needle, table in calls.items():
        _one_line_error(DatasetLayoutError, lambda: read_oml_table(table, root, "t"), str(table), needle)
    table = _write_csv(tmp_path / "t.csv", _rows())
    _one_line_error(DatasetLayoutError, lambda: read_oml_table(table, tmp_path / "nowhere", "t"),
                    str(table), str(tmp_path / "nowhere"), "is not a folder")
