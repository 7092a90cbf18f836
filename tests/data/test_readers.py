import shutil
from pathlib import Path

import numpy as np
import pytest

from antimetric.data.readers import read_dataset
from antimetric.data.table import TABLE
from antimetric.errors import DatasetLayoutError
from tests.fixtures.datasets import make_cars, make_cub, make_inshop, make_oml_table, make_sop

MAKERS = {"cub": make_cub, "car": make_cars, "sop": make_sop, "isc": make_inshop}


def _as_tuples(index):
    return [(r.path, r.label, r.split, r.box) for r in index.records]


def _layout_error(name: str, dataset_dir: Path) -> str:
    with pytest.raises(DatasetLayoutError) as caught:
        read_dataset(name, dataset_dir)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("top_folder", [False, True], ids=["flat", "top-folder"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_reader_returns_what_the_fixture_wrote(tmp_path, name, top_folder):
    dataset_dir = tmp_path / name
    info = MAKERS[name](dataset_dir, top_folder=top_folder)
    assert (info["root"] != dataset_dir) == top_folder

    index = read_dataset(name, dataset_dir)

    assert index.name == name
    assert index.root == info["root"]
    assert _as_tuples(index) == info["records"]
    assert index.summary() == info["splits"]
    for record in index.records:
        assert "\\" not in record.path and not record.path.startswith("/")
        assert (index.root / record.path).is_file()


def test_demo_reads_its_table_under_its_own_name(tmp_path):
    """The demo is kept as class folders and an open-metric-learning table, demo.csv, naming them."""
    info = make_oml_table(tmp_path / "demo", n_classes=4, per_class=2)
    index = read_dataset("demo", tmp_path / "demo")
    assert index.name == "demo" and index.sources == ("demo.csv",)
    assert [(r.path, int(index.class_names[r.label][-2:]), r.split, r.box) for r in index.records] == info["records"]


def test_unknown_dataset_lists_the_valid_names(tmp_path):
    message = _layout_error("mnist", tmp_path)
    assert "mnist" in message
    for name in TABLE:
        assert name in message


@pytest.mark.parametrize("name, n_classes, n_train", [("cub", 7, 3), ("car", 5, 2), ("cub", 2, 1), ("car", 8, 4)])
def test_cub_and_cars_split_classes_in_halves(tmp_path, name, n_classes, n_train):
    MAKERS[name](tmp_path, n_classes=n_classes, per_class=2)
    index = read_dataset(name, tmp_path)
    train = sorted({r.label for r in index.split("train")})
    test = sorted({r.label for r in index.split("test")})
    assert train == list(range(1, n_train + 1))
    assert test == list(range(n_train + 1, n_classes + 1))


def test_class_halves_follow_the_sorted_ids_present(tmp_path):
    """Class ids 3, 10, 11, 40 (not 1..4): the two smallest train."""
    make_cub(tmp_path, n_classes=4, per_class=1)
    relabel = {"1": "40", "2": "3", "3": "11", "4": "10"}
    path = tmp_path / "image_class_labels.txt"
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(f"{image_id} {relabel[label]}\n" for image_id, label in rows))
    splits = {r.label: r.split for r in read_dataset("cub", tmp_path).records}
    assert splits == {3: "train", 10: "train", 11: "test", 40: "test"}


def test_cub_boxes_are_converted_from_xywh(tmp_path):
    make_cub(tmp_path, n_classes=2, per_class=1)
    (tmp_path / "bounding_boxes.txt").write_text("1 10.5 20 30 40.25\n2 0 0 5 6\n")
    boxes = [r.box for r in read_dataset("cub", tmp_path).records]
    assert boxes == [(10.5, 20.0, 40.5, 60.25), (0.0, 0.0, 5.0, 6.0)]


def test_cars_boxes_are_kept_as_corners(tmp_path):
    info = make_cars(tmp_path, n_classes=3, per_class=1, size=24)
    boxes = [r.box for r in read_dataset("car", tmp_path).records]
    assert boxes == [record[3] for record in info["records"]]
    assert boxes[0] == (2.0, 2.0, 21.0, 22.0)  # class 1: x1 = 1 + 1 % 4, y2 = 24 - 1 - 1 % 2


def test_inshop_label_is_the_number_in_the_item_id(tmp_path):
    make_inshop(tmp_path, n_classes=4)
    index = read_dataset("isc", tmp_path)
    assert sorted({r.label for r in index.records}) == [2, 5, 8, 11]
    assert {r.split for r in index.records} == {"train", "query", "gallery"}
    assert index.records[0].path.startswith("Img/img/")


def test_readers_do_not_open_or_stat_images(tmp_path):
    info = make_cub(tmp_path, n_classes=2, per_class=2)
    (info["root"] / info["records"][0][0]).unlink()
    (info["root"] / info["records"][1][0]).write_bytes(b"garbage")
    assert _as_tuples(read_dataset("cub", tmp_path)) == info["records"]


MISSING = [
    ("cub", "images.txt"),
    ("cub", "image_class_labels.txt"),
    ("cub", "bounding_boxes.txt"),
    ("cub", "images/"),
    ("car", "cars_annos.mat"),
    ("car", "car_ims/"),
    ("sop", "Ebay_train.txt"),
    ("sop", "Ebay_test.txt"),
    ("isc", "Eval/list_eval_partition.txt"),
    ("isc", "Img/img/"),
]


@pytest.mark.parametrize("top_folder", [False, True], ids=["flat", "top-folder"])
@pytest.mark.parametrize("name, missing", MISSING, ids=[f"{n}-{m}" for n, m in MISSING])
def test_missing_file_is_one_line_naming_it(tmp_path, name, missing, top_folder):
    info = MAKERS[name](tmp_path / name, n_classes=2, per_class=2, top_folder=top_folder)
    target = info["root"] / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()

    message = _layout_error(name, tmp_path / name)

    assert message.startswith(f"{name}: missing {missing.rstrip('/')}")
    assert str(tmp_path / name) in message
    assert "http" in message and "layout" in message


def test_empty_folder_names_the_marker_and_the_source(tmp_path):
    (tmp_path / "cub").mkdir()
    message = _layout_error("cub", tmp_path / "cub")
    assert message == (
        f"cub: missing images.txt in {tmp_path / 'cub'} (expected the CUB-200-2011 layout: images.txt, "
        "image_class_labels.txt, bounding_boxes.txt, images/; download CUB_200_2011.tgz from "
        f"https://www.vision.caltech.edu/datasets/cub_200_2011/ and extract it into {tmp_path / 'cub'})"
    )


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_absent_dataset_folder_is_a_layout_error(tmp_path, name):
    assert "missing" in _layout_error(name, tmp_path / "nowhere")


def test_marker_in_two_subfolders_is_ambiguous(tmp_path):
    make_sop(tmp_path / "a", n_classes=2, per_class=1)
    make_sop(tmp_path / "b", n_classes=2, per_class=1)
    message = _layout_error("sop", tmp_path)
    assert "Ebay_train.txt" in message and "a, b" in message


def test_marker_deeper_than_one_subfolder_is_not_found(tmp_path):
    make_sop(tmp_path / "x" / "y", n_classes=2, per_class=1)
    assert "missing Ebay_train.txt" in _layout_error("sop", tmp_path)


MALFORMED = [
    ("cub", "images.txt", 2, "2 003.Bird/a.jpg extra", "expected 2 columns"),
    ("cub", "images.txt", 1, "one 001.Bird/a.jpg", "image_id is not an integer"),
    ("cub", "image_class_labels.txt", 3, "3 x", "class_id is not an integer"),
    ("cub", "bounding_boxes.txt", 2, "2 1 2 3", "expected 5 columns"),
    ("cub", "bounding_boxes.txt", 1, "1 1 2 3 wide", "height is not a number"),
    ("sop", "Ebay_train.txt", 3, "2 1 x bicycle_final/b.JPG", "super_class_id is not an integer"),
    ("sop", "Ebay_test.txt", 2, "1 2 1", "expected 4 columns"),
    ("isc", "Eval/list_eval_partition.txt", 4, "img/WOMEN/a.jpg id_00000002 val", "evaluation_status"),
    ("isc", "Eval/list_eval_partition.txt", 3, "img/WOMEN/a.jpg id_abc train", "no digits"),
    ("isc", "Eval/list_eval_partition.txt", 1, "17", "declares 17 images"),
    # paths must stay inside the dataset folder: prepare --cache-size writes a copy under each of them
    ("sop", "Ebay_train.txt", 3, "2 1 1 ../../outside.jpg", "path '../../outside.jpg' leaves the dataset folder"),
    ("sop", "Ebay_test.txt", 2, "1 2 1 /etc/outside.jpg", "path '/etc/outside.jpg' is absolute"),
    ("sop", "Ebay_train.txt", 2, r"1 1 1 C:\data\x.jpg", "starts with a drive"),
    ("sop", "Ebay_train.txt", 2, r"1 1 1 \\server\share\x.jpg", "is absolute"),
    ("sop", "Ebay_train.txt", 2, r"1 1 1 bicycle_final\..\..\x.jpg", "leaves the dataset folder"),
    ("cub", "images.txt", 2, "2 001.Bird/../../../outside.jpg", "leaves the dataset folder"),
    ("cub", "images.txt", 1, "1 /home/me/outside.jpg", "is absolute"),
    ("cub", "images.txt", 1, "1 ./", "names no file"),
    ("isc", "Eval/list_eval_partition.txt", 3, "img/../../x.jpg id_00000002 train", "leaves the dataset folder"),
    ("isc", "Eval/list_eval_partition.txt", 4, "/img/x.jpg id_00000002 train", "is absolute"),
    # boxes PIL cannot crop (an empty crop or an inverted one raises mid-epoch)
    ("cub", "bounding_boxes.txt", 2, "2 10 5 -3 8", "box x=10 y=5 width=-3 height=8 is empty or inverted"),
    ("cub", "bounding_boxes.txt", 3, "3 10 5 6 0", "is empty or inverted"),
    ("cub", "bounding_boxes.txt", 1, "1 10 5 0.2 8", "holds no pixel"),
    ("cub", "bounding_boxes.txt", 1, "1 nan 5 3 8", "not finite"),
    ("cub", "bounding_boxes.txt", 1, "1 1 5 inf 8", "not finite"),
]


@pytest.mark.parametrize("name, relative, line_no, row, problem", MALFORMED, ids=lambda v: str(v)[:24])
def test_malformed_row_names_file_and_line(tmp_path, name, relative, line_no, row, problem):
    info = MAKERS[name](tmp_path, n_classes=2, per_class=2)
    path = info["root"] / relative
    lines = path.read_text().splitlines()
    lines[line_no - 1] = row
    path.write_text("\n".join(lines) + "\n")

    message = _layout_error(name, tmp_path)

    assert f"line {line_no} of {path}" in message
    assert problem in message


def test_repeated_cub_image_id_is_malformed(tmp_path):
    make_cub(tmp_path, n_classes=2, per_class=2)
    path = tmp_path / "images.txt"
    path.write_text(path.read_text().replace("2   ", "1   ", 1))
    assert "image_id 1 repeats line 1" in _layout_error("cub", tmp_path)


def test_cub_image_without_label_is_malformed(tmp_path):
    make_cub(tmp_path, n_classes=2, per_class=2)
    path = tmp_path / "image_class_labels.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-3]))
    message = _layout_error("cub", tmp_path)
    assert "image_class_labels.txt" in message and "no row for image_id 4" in message


def test_damaged_cars_annos_is_a_layout_error(tmp_path):
    make_cars(tmp_path, n_classes=2, per_class=1)
    (tmp_path / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    assert "cars_annos.mat" in _layout_error("car", tmp_path)


def test_cars_annos_without_annotations_is_a_layout_error(tmp_path):
    from scipy.io import savemat

    make_cars(tmp_path, n_classes=2, per_class=1)
    savemat(tmp_path / "cars_annos.mat", {"class_names": [["a"]]})
    assert "no 'annotations'" in _layout_error("car", tmp_path)


def test_paths_and_boxes_inside_the_rules_are_accepted(tmp_path):
    """Negative or oversized boxes are fine (PIL pads); a './' prefix or backslashes are normalised."""
    make_cub(tmp_path, n_classes=2, per_class=1)
    (tmp_path / "bounding_boxes.txt").write_text("1 -4 -2 100 200\n2 0.4 0 0.3 1\n")
    images = tmp_path / "images.txt"
    first, second = images.read_text().split()[1], images.read_text().split()[3]
    images.write_text(f"1 ./{first}\n2 {second.replace('/', chr(92))}\n")
    index = read_dataset("cub", tmp_path)
    assert [r.box for r in index.records] == [(-4.0, -2.0, 96.0, 198.0), (0.4, 0.0, 0.7, 1.0)]
    assert [r.path for r in index.records] == ["images/" + first, "images/" + second]


def _edit_cars_annotation(root: Path, number: int, **values) -> None:
    """Rewrite fields of one annotation of cars_annos.mat, as loadmat reads and savemat writes them."""
    from scipy.io import loadmat, savemat

    mat = loadmat(root / "cars_annos.mat")
    annotations = mat["annotations"]
    for field, value in values.items():
        annotations[0, number - 1][field] = np.array([value]) if isinstance(value, str) else np.array([[value]])
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": mat["class_names"]})


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"relative_im_path": "../outside.jpg"}, "path '../outside.jpg' leaves the dataset folder"),
        ({"relative_im_path": "/tmp/outside.jpg"}, "is absolute"),
        ({"relative_im_path": r"D:\cars\000002.jpg"}, "starts with a drive"),
        ({"relative_im_path": "./"}, "names no file"),
        ({"bbox_x1": 30.0, "bbox_x2": 12.0}, "box (30, 2, 12, 23) is empty or inverted"),
        ({"bbox_y1": 9.0, "bbox_y2": 9.0}, "is empty or inverted"),
        ({"bbox_x2": float("inf")}, "not finite"),
    ],
    ids=["dotdot", "absolute", "drive", "no-file", "inverted", "empty-box", "infinite"],
)
def test_cars_annotation_outside_the_rules_names_its_number(tmp_path, values, problem):
    make_cars(tmp_path, n_classes=2, per_class=2, size=24)
    _edit_cars_annotation(tmp_path, 2, **values)
    message = _layout_error("car", tmp_path)
    assert f"{tmp_path / 'cars_annos.mat'}: annotation 2" in message
    assert problem in message
