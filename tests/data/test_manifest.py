import json
import os

import pytest

from antimetric.data.manifest import prepare as manifest_module
from antimetric.data.manifest.prepare import load_manifest, load_or_prepare, prepare
from antimetric.data.readers import read_dataset
from antimetric.data.readers.source import MANIFEST_NAME, benchmark
from antimetric.errors import DatasetLayoutError
from tests.fixtures.datasets import make_cars, make_cub, make_inshop, make_oml_table, make_sop

MAKERS = {"cub": make_cub, "car": make_cars, "sop": make_sop, "isc": make_inshop, "demo": make_oml_table}
# An archive's layout may come inside its own top folder; the demo's table is read where it lies.
LAYOUTS = [(name, top_folder) for name in sorted(MAKERS) for top_folder in (False, True)
           if not (name == "demo" and top_folder)]


def _damage(info, missing_index: int, corrupt_index: int) -> tuple[str, str]:
    """Delete one image and cut another short; returns their record paths."""
    missing, corrupt = info["records"][missing_index][0], info["records"][corrupt_index][0]
    (info["root"] / missing).unlink()
    path = info["root"] / corrupt
    path.write_bytes(path.read_bytes()[:40])
    return missing, corrupt


@pytest.mark.parametrize(("name", "top_folder"), LAYOUTS,
                         ids=[f"{name}-{'top-folder' if top else 'flat'}" for name, top in LAYOUTS])
def test_manifest_reads_back_as_the_layout(tmp_path, name, top_folder):
    info = MAKERS[name](tmp_path / name, **({"top_folder": True} if top_folder else {}))

    report = prepare(benchmark(name, tmp_path), progress=False)
    loaded = load_manifest(benchmark(name, tmp_path))

    expected = read_dataset(name, tmp_path / name)
    assert loaded.name == name
    assert loaded.root.is_absolute()
    assert loaded.root == info["root"].resolve()
    assert loaded.records == expected.records
    assert report.manifest == tmp_path / name / MANIFEST_NAME
    assert report.to_json() == {
        "dataset": name,
        "manifest": str(tmp_path / name / MANIFEST_NAME),
        "cache": None,
        "splits": info["splits"],
        "unreadable": 0,
        "unreadable_files": [],
    }


def test_unreadable_images_are_listed_and_left_out(tmp_path):
    info = make_cub(tmp_path / "cub", n_classes=4, per_class=3)
    missing, corrupt = _damage(info, missing_index=0, corrupt_index=7)

    report = prepare(benchmark("cub", tmp_path), progress=False)

    reasons = {entry.path: entry.reason for entry in report.unreadable}
    assert set(reasons) == {missing, corrupt}
    assert reasons[missing] == "missing file"
    assert reasons[corrupt] and "\n" not in reasons[corrupt]
    summary = report.to_json()
    assert summary["unreadable"] == 2
    assert sorted(summary["unreadable_files"]) == sorted([missing, corrupt])
    assert summary["splits"] == {"train": {"images": 5, "classes": 2}, "test": {"images": 5, "classes": 2}}

    loaded = load_manifest(benchmark("cub", tmp_path))
    expected = [r for r in read_dataset("cub", tmp_path / "cub").records if r.path not in {missing, corrupt}]
    assert loaded.records == expected
    assert loaded.summary() == summary["splits"]


def test_report_lists_at_most_twenty_unreadable_files(tmp_path):
    info = make_sop(tmp_path / "sop", n_classes=6, per_class=4)
    for path, *_ in info["records"]:
        (info["root"] / path).unlink()
    summary = prepare(benchmark("sop", tmp_path), progress=False).to_json()
    assert summary["unreadable"] == 24
    assert len(summary["unreadable_files"]) == 20
    assert load_manifest(benchmark("sop", tmp_path)).records == []


def test_manifest_is_plain_json_in_the_documented_format(tmp_path):
    info = make_cub(tmp_path / "cub", n_classes=2, per_class=2, top_folder=True)
    missing, _ = _damage(info, missing_index=1, corrupt_index=2)
    prepare(benchmark("cub", tmp_path), progress=False)

    raw = (tmp_path / "cub" / MANIFEST_NAME).read_bytes()
    assert raw.lstrip().startswith(b"{")
    manifest = json.loads(raw)
    assert set(manifest) == {"format", "dataset", "root", "index_files", "class_names", "records", "unreadable"}
    assert manifest["format"] == 3
    assert manifest["class_names"] == {}  # a benchmark's classes are its ids
    assert manifest["dataset"] == "cub"
    assert manifest["root"] == "CUB_200_2011"
    root = info["root"]
    assert manifest["index_files"] == {
        name: [(root / name).stat().st_size, (root / name).stat().st_mtime_ns]
        for name in ("images.txt", "image_class_labels.txt", "bounding_boxes.txt")
    }
    assert [tuple(row[:3]) for row in manifest["records"]] == [r[:3] for r in info["records"]]
    assert manifest["records"][0][3] == list(info["records"][0][3])
    stat = (root / info["records"][0][0]).stat()
    assert manifest["records"][0][4] == [stat.st_size, stat.st_mtime_ns]  # what tells a changed image
    assert manifest["records"][0][5] is None  # no category
    assert [row[4] for row in manifest["records"] if row[0] == missing] == [None]
    assert {entry["path"] for entry in manifest["unreadable"]} >= {missing}
    assert all(set(entry) == {"path", "reason"} for entry in manifest["unreadable"])


def test_inshop_manifest_has_null_boxes_and_flat_root(tmp_path):
    make_inshop(tmp_path / "isc")
    prepare(benchmark("isc", tmp_path), progress=False)
    manifest = json.loads((tmp_path / "isc" / MANIFEST_NAME).read_text())
    assert manifest["root"] == "."
    assert all(row[3] is None for row in manifest["records"])


def test_manifest_is_written_atomically(tmp_path, monkeypatch):
    make_cub(tmp_path / "cub", n_classes=2, per_class=1)
    prepare(benchmark("cub", tmp_path), progress=False)
    folder = tmp_path / "cub"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["images", "images.txt", "image_class_labels.txt", "bounding_boxes.txt", MANIFEST_NAME]
    )
    before = (folder / MANIFEST_NAME).read_bytes()

    replaced = []

    def failing_replace(source, target):
        replaced.append((os.path.dirname(source), os.path.dirname(target)))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)  # the one os module, which base.atomic calls
    with pytest.raises(DatasetLayoutError, match="cannot write manifest .*disk full"):
        prepare(benchmark("cub", tmp_path), progress=False)

    assert replaced == [(str(folder), str(folder))]  # the temporary file sits beside the manifest
    assert (folder / MANIFEST_NAME).read_bytes() == before
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_missing_manifest_tells_how_to_prepare(tmp_path):
    make_cub(tmp_path / "cub", n_classes=2, per_class=1)
    with pytest.raises(DatasetLayoutError) as caught:
        load_manifest(benchmark("cub", tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert f"python -m antimetric prepare --data-path {tmp_path} --data-name cub" in message


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"format": 99}, "format 99"),
        ({"dataset": "sop"}, "'sop'"),
        ({"records": [["a.jpg", "one", "train", None]]}, "malformed manifest"),
        ({"records": [["a.jpg", 1, "validation", None]]}, "malformed manifest"),
    ],
    ids=["format", "dataset", "label", "split"],
)
def test_foreign_or_damaged_manifest_is_a_clear_error(tmp_path, change, expected):
    make_cub(tmp_path / "cub", n_classes=2, per_class=1)
    prepare(benchmark("cub", tmp_path), progress=False)
    path = tmp_path / "cub" / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(DatasetLayoutError) as caught:
        load_manifest(benchmark("cub", tmp_path))
    assert expected in str(caught.value)
    assert "antimetric prepare" in str(caught.value)


def test_non_json_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "cub").mkdir()
    (tmp_path / "cub" / MANIFEST_NAME).write_bytes(b"\x80\x04\x95 pickled")
    with pytest.raises(DatasetLayoutError, match="cannot read manifest"):
        load_manifest(benchmark("cub", tmp_path))


def test_load_or_prepare_prepares_once(tmp_path, monkeypatch, capsys):
    make_cub(tmp_path / "cub", n_classes=2, per_class=2)
    first = load_or_prepare(benchmark("cub", tmp_path), progress=False)
    assert (tmp_path / "cub" / MANIFEST_NAME).is_file()

    def no_second_prepare(*args, **kwargs):
        raise AssertionError("prepare ran although the manifest exists")

    monkeypatch.setattr(manifest_module, "prepare", no_second_prepare)
    monkeypatch.setattr(manifest_module, "_prepare", no_second_prepare)
    capsys.readouterr()
    assert load_or_prepare(benchmark("cub", tmp_path), progress=False) == first
    assert capsys.readouterr().err == ""


def test_progress_bar_goes_to_stderr_only_when_asked(tmp_path, capsys):
    make_cub(tmp_path / "cub", n_classes=2, per_class=1)
    prepare(benchmark("cub", tmp_path), progress=False)
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    prepare(benchmark("cub", tmp_path), progress=True)
    loud = capsys.readouterr()
    assert loud.out == "" and "2/2" in loud.err


def test_prepare_of_a_missing_layout_raises_and_writes_nothing(tmp_path):
    (tmp_path / "car").mkdir()
    with pytest.raises(DatasetLayoutError, match="cars_annos.mat"):
        prepare(benchmark("car", tmp_path), progress=False)
    assert list((tmp_path / "car").iterdir()) == []


def _edit_manifest(data_path, name, edit) -> None:
    path = data_path / name / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _set_first_path(path):
    def edit(manifest):
        manifest["records"][0][0] = path
    return edit


def _set_root(root):
    def edit(manifest):
        manifest["root"] = root
    return edit


def _set_first_box(box):
    def edit(manifest):
        manifest["records"][0][3] = box
    return edit


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_set_first_path("../../outside.jpg"), "'../../outside.jpg' leaves the dataset folder"),
        (_set_first_path("/etc/outside.jpg"), "'/etc/outside.jpg' is absolute"),
        (_set_first_path(r"C:\outside.jpg"), "starts with a drive"),
        (_set_root("../.."), "'../..' leaves the dataset folder"),
        (_set_first_box([5, 5, 2, 9]), "box [5, 5, 2, 9] is empty or inverted"),
        (_set_first_box([5, 5, "nan", 9]), "is not finite"),
    ],
    ids=["dotdot", "absolute", "drive", "root", "inverted-box", "nan-box"],
)
def test_a_manifest_cannot_point_outside_the_dataset_or_hold_a_bad_box(tmp_path, edit, problem):
    make_cub(tmp_path / "cub", n_classes=2, per_class=1)
    prepare(benchmark("cub", tmp_path), progress=False)
    _edit_manifest(tmp_path, "cub", edit)
    for load in (load_manifest, load_or_prepare):
        with pytest.raises(DatasetLayoutError) as caught:
            load(benchmark("cub", tmp_path))
        message = str(caught.value)
        assert "\n" not in message and problem in message and "antimetric prepare" in message


def test_a_deleted_original_is_noticed_and_left_out(tmp_path, capsys):
    info = make_cub(tmp_path / "cub", n_classes=4, per_class=3)
    assert len(load_or_prepare(benchmark("cub", tmp_path), progress=False).records) == 12
    gone = info["records"][2][0]
    (info["root"] / gone).unlink()
    capsys.readouterr()

    index = load_or_prepare(benchmark("cub", tmp_path), progress=False)

    assert len(index.records) == 11 and gone not in {r.path for r in index.records}
    manifest_file = tmp_path / "cub" / MANIFEST_NAME
    assert capsys.readouterr().err.splitlines() == [
        "cub: 1 image changed or missing since the manifest was written; preparing again",
        f"cub: 1 of 12 images are unreadable and left out (see {manifest_file})",
    ]
    assert load_or_prepare(benchmark("cub", tmp_path), progress=False) == index  # still missing: nothing to prepare
    assert capsys.readouterr().err.splitlines() == [
        f"cub: 1 of 12 images are unreadable and left out (see {manifest_file})",
    ]


def test_a_replaced_original_is_prepared_again(tmp_path, capsys):
    info = make_sop(tmp_path / "sop", n_classes=4, per_class=2)
    load_or_prepare(benchmark("sop", tmp_path), progress=False)
    broken, mended = info["records"][0][0], info["records"][5][0]
    (info["root"] / broken).write_bytes(b"no longer a jpeg")
    os.utime(info["root"] / mended, ns=(1, 1))  # same bytes, another modification time
    capsys.readouterr()

    index = load_or_prepare(benchmark("sop", tmp_path), progress=False)

    assert [r.path for r in index.records] == [r[0] for r in info["records"] if r[0] != broken]
    assert "sop: 2 images changed or missing since the manifest was written; preparing again" in capsys.readouterr().err


def test_an_edited_index_file_is_prepared_again(tmp_path, capsys):
    info = make_cub(tmp_path / "cub", n_classes=2, per_class=2)
    load_or_prepare(benchmark("cub", tmp_path), progress=False)
    boxes = info["root"] / "bounding_boxes.txt"
    boxes.write_text("1 1 1 10 10\n" + boxes.read_text().split("\n", 1)[1])
    capsys.readouterr()

    index = load_or_prepare(benchmark("cub", tmp_path), progress=False)

    assert index.records[0].box == (1.0, 1.0, 11.0, 11.0)
    assert capsys.readouterr().err == (
        "cub: bounding_boxes.txt changed since the manifest was written; preparing again\n"
    )


def test_a_manifest_of_an_older_format_is_prepared_again(tmp_path, capsys):
    make_cub(tmp_path / "cub", n_classes=2, per_class=2)
    index = load_or_prepare(benchmark("cub", tmp_path), progress=False)

    def to_format_1(manifest):
        manifest["format"] = 1
        del manifest["index_files"]
        manifest["records"] = [row[:4] for row in manifest["records"]]

    _edit_manifest(tmp_path, "cub", to_format_1)
    with pytest.raises(DatasetLayoutError, match="format 1"):
        load_manifest(benchmark("cub", tmp_path))
    capsys.readouterr()

    assert load_or_prepare(benchmark("cub", tmp_path), progress=False) == index
    assert capsys.readouterr().err == (
        f"cub: manifest {tmp_path / 'cub' / MANIFEST_NAME} has format 1, this version writes format 3; "
        "preparing again\n"
    )
    assert json.loads((tmp_path / "cub" / MANIFEST_NAME).read_text())["format"] == 3
