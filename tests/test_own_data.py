"""A user's own images end to end (`--data PATH`): a folder of class subfolders or an open-metric-learning table,
written here as real small images, trained for real (tiny backbone, 32 px, one epoch), then evaluated, indexed,
searched, resumed and refused, through antimetric.cli.main as a user runs it."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import antimetric
from antimetric.cli import main
from antimetric.data.loading import load_index
from antimetric.data.readers.source import own_data
from antimetric.data.records import TEST, TRAIN
from antimetric.training.config import RunConfig
from antimetric.training.loop import fit
from antimetric.training.run_folder import BEST_FILE, CONFIG_FILE, EPOCHS_FILE, FEATURES_FILE, LAST_FILE, META_IDS_FILE
from antimetric.training.session import config_splits
from tests.fixtures.own_data import N_CLASSES, PER_CLASS, SIDE, image_path, make_shapes, write_image

# Each training run is a few seconds on a CPU: these options on every run of this module.
FAST = ["--backbone", "tiny", "--image-size", "32", "--ensemble-size", "2", "--num-epochs", "1", "--batch-size", "8",
        "--device", "cpu", "--num-workers", "0", "--val-fraction", "0"]
# 4 training classes and 2 branches: 2 ** 2 codes. Given, so that these runs do not rest on the measured default
# (test_measured_defaults_fit_the_folders_training_classes checks that one).
META = ["--meta-class-size", "2"]
def folder_splits(root: Path) -> dict[str, str]:
    """Image path (relative) -> train or test, as a folder's test classes are drawn with the default options."""
    source = own_data(root)
    return {r.path: r.split for r in source.with_splits(source.read()).records}


def write_table(path: Path, rows: list[dict], columns: tuple[str, ...] = ("label", "path", "split")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def table_rows(root: Path, query_gallery: bool = False) -> list[dict]:
    """The folder's images and its drawn split as table rows, in the folder's record order, labels as the
    class names; with query_gallery each test class's first image is its query and the others its gallery."""
    rows, seen = [], set()
    for path, split in folder_splits(root).items():
        name = path.split("/")[0]
        row = {"label": name, "path": path, "split": split}
        if query_gallery and split == TEST:
            row.update(is_query=int(name not in seen), is_gallery=int(name in seen))
            seen.add(name)
        rows.append(row)
    return rows


def train(capsys, *args: str) -> Path:
    """`train` with the fast options; returns the run folder."""
    capsys.readouterr()
    code = main(["train", *FAST, *args, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return Path(json.loads(captured.out.strip().splitlines()[-1])["run_dir"])


def one_line_error(capsys, *argv: str) -> str:
    """Exit status 2 and exactly one line on stderr, `error: ...`; returns that line."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def json_of(capsys, *argv: str) -> dict:
    capsys.readouterr()
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def reported_test_metrics(run_dir: Path) -> dict[str, float]:
    """The test metrics of the run's best epoch, as its epochs.csv holds them."""
    best_epoch = torch.load(run_dir / BEST_FILE, weights_only=True)["epoch"]
    with (run_dir / EPOCHS_FILE).open() as handle:
        row = next(r for r in csv.DictReader(handle) if int(r["epoch"]) == best_epoch)
    return {key: float(value) for key, value in row.items() if key.startswith("test_")}


def run_config(run_dir: Path) -> dict:
    return json.loads((run_dir / CONFIG_FILE).read_text())


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` -> (size, modification time in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A folder of 8 classes of 5 images; read it, never change it (tests that change data make their own)."""
    return make_shapes(tmp_path_factory.mktemp("own") / "shapes")


@pytest.fixture(scope="module")
def folder_run(shapes, tmp_path_factory) -> Path:
    """A one-epoch run on `shapes`, through the command line as a user starts it."""
    out = tmp_path_factory.mktemp("folder-runs")
    args = ["train", *FAST, *META, "--data", str(shapes), "--output-dir", str(out), "--run-name", "r", "--quiet"]
    assert main(args) == 0
    return out / "r"


# --- 1. a folder of class subfolders ----------------------------------------------------------------------------

def test_a_folder_run_records_its_data_and_the_defaults_measured_on_it(folder_run, shapes):
    config = run_config(folder_run)
    assert config["data"] == str(shapes) and Path(config["data"]).is_absolute()
    assert config["data_name"] == "shapes" and config["data_path"] == str(shapes)
    assert config["recalls"] == [1, 2, 4, 8]  # 20 test images: each query searches 19
    assert config["meta_class_size"] == 2
    # not pretrained: the channel statistics of its training images, not ImageNet's
    assert config["pretrained"] is False
    assert config["mean"] != [0.485, 0.456, 0.406] and all(0 < v < 1 for v in config["mean"] + config["std"])
    assert (shapes / ".antimetric" / "antimetric-manifest.json").is_file()
    assert sorted(p.name for p in shapes.iterdir()) == [".antimetric", *(f"class{c}" for c in range(N_CLASSES))]


def test_measured_defaults_fit_the_folders_training_classes(shapes, tmp_path, capsys):
    """No --meta-class-size: the default is brought within the classes left to train (4, or 2 once --val-fraction
    holds 2 of them out)."""
    for val_fraction, training_classes in (("0", 4), ("0.5", 2)):
        run = train(capsys, "--data", str(shapes), "--output-dir", str(tmp_path), "--no-train",
                    "--val-fraction", val_fraction)
        assert run_config(run)["meta_class_size"] <= training_classes


def test_a_folders_test_classes_are_never_trained_on(folder_run, shapes, capsys):
    config = antimetric.load(folder_run, device="cpu").config
    index = load_index(config.data, progress=False)
    splits = config_splits(config, index)
    folder_of = {r.label: r.path.split("/")[0] for r in index.records}
    train_folders = {folder_of[label] for label in splits.train_classes}
    test_folders = {r.path.split("/")[0] for r in splits.test.query}
    assert len(train_folders) == len(test_folders) == N_CLASSES // 2
    assert train_folders | test_folders == {f"class{c}" for c in range(N_CLASSES)}
    assert not train_folders & test_folders
    assert {r.path.split("/")[0] for r in splits.train} == train_folders
    saved = np.load(folder_run / FEATURES_FILE)
    assert {p.split("/")[0] for p in saved["query_paths"]} == test_folders and len(saved["query_paths"]) == 20
    summary = json_of(capsys, "prepare", "--data", str(shapes))
    assert summary["splits"] == {"train": {"images": 20, "classes": 4}, "test": {"images": 20, "classes": 4}}


def test_evaluate_a_folder_run_gives_the_metrics_training_reported(folder_run, shapes, capsys):
    reported = reported_test_metrics(folder_run)
    assert set(reported) >= {"test_recall_at_1", "test_recall_at_8", "test_map_at_r"}
    own = json_of(capsys, "evaluate", "--model", str(folder_run), "--device", "cpu")
    assert own == pytest.approx(reported, abs=1e-9)
    named = json_of(capsys, "evaluate", "--model", str(folder_run), "--device", "cpu", "--data", str(shapes))
    assert named == pytest.approx(reported, abs=1e-9)


def test_index_a_folder_and_retrieve_one_of_its_images_first(folder_run, shapes, tmp_path, capsys):
    summary = json_of(capsys, "index", "--model", str(folder_run), "--images", str(shapes), "--out",
                      str(tmp_path / "idx"), "--device", "cpu")
    assert summary["images"] == N_CLASSES * PER_CLASS and summary["labelled"]  # .antimetric is no class
    query = image_path(shapes, 5, 3)
    result = json_of(capsys, "retrieve", "--index", str(tmp_path / "idx"), "--query", str(query), "--top-k", "3",
                     "--device", "cpu")
    (answer,) = result["queries"]
    first = answer["neighbours"][0]
    assert first["path"] == str(query) and first["is_query"] and first["correct"] is True
    assert first["similarity"] == pytest.approx(1.0, abs=2e-3)
    assert answer["label"] == "class5"


# --- 2. a table in open-metric-learning's columns ---------------------------------------------------------------

def _brute_force_recall_at_1(saved, keep_query=None, keep_gallery=None) -> float:
    """Query -> gallery Recall@1 from a run's feature database (the rows kept, default all), ties counted as misses:
    a query hits when its best same-class gallery item is strictly more similar than every other-class one."""
    keep_query = np.ones(len(saved["query_paths"]), bool) if keep_query is None else keep_query
    keep_gallery = np.ones(len(saved["gallery_paths"]), bool) if keep_gallery is None else keep_gallery
    query = saved["query_features"][keep_query].astype(np.float64)
    gallery = saved["gallery_features"][keep_gallery].astype(np.float64)
    same = saved["query_labels"][keep_query][:, None] == saved["gallery_labels"][keep_gallery][None, :]
    sims = query @ gallery.T
    hits = [row[mask].max() > row[~mask].max() for row, mask in zip(sims, same) if mask.any()]
    return float(np.mean(hits))


def test_a_table_with_queries_and_galleries_scores_query_to_gallery(tmp_path, capsys):
    """Each test class: one query, four gallery images; two categories of two test classes each, which evaluate
    scores each on its own images."""
    root = make_shapes(tmp_path / "images")
    rows = table_rows(root, query_gallery=True)
    test_classes = sorted({row["label"] for row in rows if row["split"] == TEST})
    category = {name: "first" if name in test_classes[:2] else "second" for name in test_classes}
    rows = [dict(row, path=f"images/{row['path']}", category=category.get(row["label"], "")) for row in rows]
    table = write_table(tmp_path / "items.csv", rows, ("label", "path", "split", "is_query", "is_gallery", "category"))
    run = train(capsys, *META, "--data", str(table), "--output-dir", str(tmp_path / "runs"))
    config = run_config(run)
    assert config["data_name"] == "items" and config["data"] == str(table) and config["data_path"] == str(tmp_path)
    assert config["recalls"] == [1, 2, 4, 8]  # a gallery of 16
    saved = np.load(run / FEATURES_FILE)
    assert len(saved["query_paths"]) == 4 and len(saved["gallery_paths"]) == 16
    reported = reported_test_metrics(run)
    evaluated = json_of(capsys, "evaluate", "--model", str(run), "--device", "cpu")
    assert {key: evaluated[key] for key in reported} == pytest.approx(reported, abs=1e-9)
    assert evaluated["test_recall_at_1"] == pytest.approx(_brute_force_recall_at_1(saved), abs=1e-9)
    category_of = {f"images/{row['path'].split('/', 1)[1]}": row["category"] for row in rows}
    for name in ("first", "second"):
        in_query = np.array([category_of[p] == name for p in saved["query_paths"]])
        in_gallery = np.array([category_of[p] == name for p in saved["gallery_paths"]])
        assert evaluated[f"test_recall_at_1/{name}"] == pytest.approx(
            _brute_force_recall_at_1(saved, in_query, in_gallery), abs=1e-9)
    # `index` on the table holds its gallery, labelled
    summary = json_of(capsys, "index", "--model", str(run), "--images", str(table), "--out", str(tmp_path / "idx"),
                      "--device", "cpu")
    assert summary["images"] == 16 and summary["labelled"]


def test_a_table_with_boxes_trains_cropped_and_a_folder_refuses_cropping(shapes, tmp_path, capsys):
    root = make_shapes(tmp_path / "boxed")
    box = {"x_1": 2, "y_1": 2, "x_2": SIDE - 3, "y_2": SIDE - 8}
    table = write_table(root / "boxes.csv", [dict(row, **box) for row in table_rows(root)],
                        ("label", "path", "split", "x_1", "x_2", "y_1", "y_2"))
    run = train(capsys, *META, "--data", str(table), "--crop-type", "cropped", "--output-dir", str(tmp_path / "runs"))
    assert run_config(run)["crop_type"] == "cropped"
    # evaluate crops as training did (the ensemble's own crop type on its own data)
    evaluated = json_of(capsys, "evaluate", "--model", str(run), "--device", "cpu")
    assert evaluated == pytest.approx(reported_test_metrics(run), abs=1e-9)

    out = tmp_path / "refused"
    error = one_line_error(capsys, "train", *FAST, *META, "--data", str(shapes), "--crop-type", "cropped",
                           "--output-dir", str(out))
    assert "--crop-type cropped needs bounding boxes" in error and "shapes" in error
    assert not out.exists() or list(out.iterdir()) == []


# --- 3. a folder and the same table ------------------------------------------------------------------------------

def test_a_folder_and_the_equivalent_table_give_the_same_run(folder_run, shapes, tmp_path, capsys):
    """The table names the same images, labels and splits as the folder's drawn test classes: same training,
    same scores, same meta-class ids."""
    copy = make_shapes(tmp_path / "copy")
    rows = table_rows(shapes)
    assert {row["split"] for row in rows} == {TRAIN, TEST}
    table = write_table(copy / "same.csv", rows)
    run = train(capsys, *META, "--data", str(table), "--output-dir", str(tmp_path / "runs"))
    folder_history, table_history = (list(csv.DictReader((r / EPOCHS_FILE).open())) for r in (folder_run, run))
    for key in ("loss", "branch_accuracy", "test_recall_at_1", "test_recall_at_2", "test_recall_at_4",
                "test_recall_at_8", "test_map_at_r", "test_r_precision"):
        assert table_history[0][key] == folder_history[0][key], key
    assert json.loads((run / META_IDS_FILE).read_text()) == json.loads((folder_run / META_IDS_FILE).read_text())
    for key in ("mean", "std", "recalls", "meta_class_size"):
        assert run_config(run)[key] == run_config(folder_run)[key], key


# --- 4. data changed under a run ---------------------------------------------------------------------------------

def _cut_run(data: Path, out: Path) -> Path:
    """A run of 2 epochs stopped after its first (its last.pt saved), as Ctrl-C would leave it."""
    config = RunConfig.from_flat(dict(data=str(data), backbone="tiny", image_size=32, ensemble_size=2,
                                      meta_class_size=2, num_epochs=2, batch_size=8, device="cpu", num_workers=0,
                                      val_fraction=0.0, output_dir=str(out), run_name="cut"))
    result = fit(config, lambda result, save: True)
    assert [row["epoch"] for row in result.history] == [1] and (result.run_dir / LAST_FILE).is_file()
    return result.run_dir


def _manifest_paths(manifest: Path) -> list[str]:
    return [record[0] for record in json.loads(manifest.read_text())["records"]]


@pytest.mark.parametrize("change", ["image added", "image moved to another class"])
def test_resume_refuses_a_folder_changed_since_the_run_started(tmp_path, capsys, change):
    root = make_shapes(tmp_path / "mine")
    run = _cut_run(root, tmp_path / "runs")
    splits = folder_splits(root)
    train_folder = next(path.split("/")[0] for path, split in splits.items() if split == TRAIN)
    test_folder = next(path.split("/")[0] for path, split in splits.items() if split == TEST)
    if change == "image added":
        new = root / train_folder / "new.png"
        Image.open(image_path(root, int(train_folder[5:]), 0)).save(new)
        changed_folders = [train_folder]
    else:
        moved = image_path(root, int(train_folder[5:]), 1)
        new = root / test_folder / moved.name
        moved.rename(new)
        changed_folders = sorted([train_folder, test_folder])
    before = folder_state(run)

    error = one_line_error(capsys, "train", "--resume", str(run))
    assert error.startswith("error: --resume: mine: ") and "start a new run" in error
    assert all(folder in error for folder in changed_folders), error
    assert folder_state(run) == before

    # a new run on the changed folder prepares it again: the manifest holds the new image
    new_run = train(capsys, *META, "--data", str(root), "--output-dir", str(tmp_path / "runs"), "--no-train")
    assert new.relative_to(root).as_posix() in _manifest_paths(root / ".antimetric" / "antimetric-manifest.json")
    assert run_config(new_run)["decisions"]["data_digest"] != run_config(run)["decisions"]["data_digest"]
    # the manifest is up to date again, but not the data the cut run started on
    error = one_line_error(capsys, "train", "--resume", str(run))
    assert "the images, labels or splits of mine changed since this run started" in error
    assert folder_state(run) == before


def test_resume_refuses_a_table_edited_since_the_run_started(tmp_path, capsys):
    root = make_shapes(tmp_path / "images")
    rows = table_rows(root)
    table = write_table(root / "tab.csv", rows)
    run = _cut_run(table, tmp_path / "runs")
    before = folder_state(run)
    train_labels = sorted({row["label"] for row in rows if row["split"] == TRAIN})
    first = next(i for i, row in enumerate(rows) if row["label"] == train_labels[0])
    rows[first] = dict(rows[first], label=train_labels[1])  # one image relabelled
    write_table(table, rows)

    error = one_line_error(capsys, "train", "--resume", str(run))
    assert error.startswith("error: --resume: tab: ") and "tab.csv" in error, error
    assert folder_state(run) == before
    train(capsys, *META, "--data", str(table), "--output-dir", str(tmp_path / "runs"), "--no-train")
    error = one_line_error(capsys, "train", "--resume", str(run))
    assert "the images, labels or splits of tab changed since this run started" in error
    assert folder_state(run) == before


# --- 5. data that cannot be used, refused before any run folder -------------------------------------------------

def _bad_data(kind: str, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    if kind == "no class subfolders":
        for k in range(4):
            write_image(root / f"img{k}", k, k)
        return root
    if kind == "one class a side":
        return make_shapes(root, n_classes=2)
    make_shapes(root)
    rows = table_rows(root)
    if kind == "no split column":
        return write_table(root / "t.csv", rows, ("label", "path"))
    if kind == "path outside the root":
        write_image(tmp_path / "x", 0, 0)
        rows[0] = dict(rows[0], path="../x.png")
    if kind == "label in train and test":  # the first train row (line 2) relabelled as a test class
        test_label = next(row["label"] for row in rows if row["split"] == TEST)
        first = next(i for i, row in enumerate(rows) if row["split"] == TRAIN)
        rows.insert(0, dict(rows.pop(first), label=test_label))
    return write_table(root / "t.csv", rows)


@pytest.mark.parametrize("kind, needles", [
    ("no class subfolders", ["no class subfolder holding an image"]),
    ("no split column", ["t.csv", "misses the column(s) split"]),
    ("path outside the root", ["line 2", "'../x.png'", "leaves the dataset folder"]),
    ("label in train and test", ["line 2", "is in train rows", "and test rows", "--allow-shared-labels"]),
    ("one class a side", ["leaves 1 training and 1 test classes", "--test-classes"]),
])
def test_bad_data_is_one_line_and_no_run_folder(tmp_path, capsys, kind, needles):
    data = _bad_data(kind, tmp_path)
    out = tmp_path / "runs"
    # the defaults measured on the data (it is read before the run folder is made), or all given (it is read after)
    for args in ([], [*META, "--recalls", "1,2", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]):
        error = one_line_error(capsys, "train", *FAST, *args, "--data", str(data), "--output-dir", str(out))
        assert all(needle in error for needle in needles), error
        assert not out.exists() or list(out.iterdir()) == []


def test_allow_shared_labels_trains_a_table_whose_label_is_on_both_sides(tmp_path, capsys):
    table = _bad_data("label in train and test", tmp_path)
    shared = next(csv.DictReader(table.open()))["label"]
    # 5 training classes now (the shared one too): 3 ** 2 codes
    run = train(capsys, "--meta-class-size", "3", "--data", str(table), "--allow-shared-labels", "--output-dir",
                str(tmp_path / "runs"))
    assert run_config(run)["allow_shared_labels"] is True
    config = antimetric.load(run, device="cpu").config
    splits = config_splits(config, load_index(config.data, progress=False))
    test_labels = {r.label for r in splits.test.query}
    assert len(splits.train_classes) == 5 and set(splits.train_classes) & test_labels == {int(shared[5:])}


# --- 6. test classes of a single image ---------------------------------------------------------------------------

def test_a_test_class_of_one_image_is_left_out_and_said_so(tmp_path, capsys):
    root = make_shapes(tmp_path / "few")
    test_folder = next(path.split("/")[0] for path, split in folder_splits(root).items() if split == TEST)
    for k in range(1, PER_CLASS):
        image_path(root, int(test_folder[5:]), k).unlink()
    capsys.readouterr()
    assert main(["train", *FAST, *META, "--data", str(root), "--output-dir", str(tmp_path / "runs"), "--quiet",
                 "--json"]) == 0
    captured = capsys.readouterr()
    warning = ("warning: 1 of 16 queries have no other item of their class; they are left out of Recall@K, MAP@R "
               "and R-precision")
    assert captured.err.splitlines().count(warning) == 1, captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["best_epoch"] == 1 and 0 <= result["test_recall_at_1"] <= 1


def test_a_table_outside_its_image_folder_keeps_a_manifest_that_reads_back(tmp_path):
    """A table elsewhere than its images (--data-path ROOT), named through a linked folder: its manifest stamps
    the table by its real path, and reading the manifest back accepts it."""
    from antimetric.data.manifest.prepare import load_manifest, prepare

    root = make_shapes(tmp_path / "images")
    (tmp_path / "tables").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "tables")
    table = write_table(tmp_path / "tables" / "shop.csv", table_rows(root))
    source = own_data(tmp_path / "linked" / "shop.csv", root)
    prepare(source, progress=False)
    assert len(load_manifest(source).records) == len(table_rows(root))
    assert table.is_file()


def test_load_ids_alone_reuses_the_latest_run_of_the_same_folder(folder_run, shapes, capsys):
    """--load-ids without a path: the latest run of this dataset in --output-dir, a folder's run found by its name."""
    run = train(capsys, *META, "--data", str(shapes), "--output-dir", str(folder_run.parent), "--load-ids")
    assert run_config(run)["load_ids"] == str(folder_run / META_IDS_FILE)
