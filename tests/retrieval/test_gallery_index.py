"""Gallery index: finding and labelling images, building (atomic, skipping unreadable files), reading, models."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from antimetric.data.readers import read_dataset
from antimetric.errors import ConfigError
from antimetric.retrieval.gallery_build import build_index, check_target
from antimetric.retrieval.gallery_images import NO_LABEL, find_images, folder_images
from antimetric.retrieval.gallery_index import EMBEDDINGS_FILE, INFO_FILE, ITEMS_FILE, check_model, read_index
from antimetric.retrieval.trained import load
from tests.fixtures.datasets import make_cub
from tests.fixtures.folders import make_fifo

ROOT = Path(__file__).resolve().parents[2]


def write_image(path: Path, colour: tuple[int, int, int], size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:] = colour
    pixels[size // 4: size // 2, size // 3:] = (255 - np.array(colour)) // 2  # not a flat image
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def class_folder(tmp_path) -> Path:
    """cats/ and dogs/ with three images each, one of the cats a damaged file; a hidden folder."""
    root = tmp_path / "photos"
    for i in range(3):
        write_image(root / "dogs" / f"d{i}.png", (200, 40 * i, 30))
    for i in range(2):
        write_image(root / "cats" / f"c{i}.jpg", (20, 90, 60 * i))
    (root / "cats" / "broken.jpg").write_bytes(b"not a jpeg at all")
    write_image(root / ".thumbnails" / "t.png", (0, 0, 0))
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def ensemble(demo_run):
    return load(demo_run, device="cpu")


def test_a_folder_is_labelled_by_its_subfolders(class_folder, tmp_path):
    outside = write_image(tmp_path / "elsewhere.png", (1, 2, 3))
    (class_folder / "dogs" / "link.png").symlink_to(outside)  # leads out of the root: skipped
    (class_folder / "dogs" / "alias.png").symlink_to(class_folder / "dogs" / "d0.png")  # stays inside: kept
    images = folder_images(class_folder)
    assert images.root == class_folder.resolve() and images.class_names == ["cats", "dogs"]
    assert images.paths == ["cats/broken.jpg", "cats/c0.jpg", "cats/c1.jpg", "dogs/alias.png", "dogs/d0.png",
                            "dogs/d1.png", "dogs/d2.png"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1, 1, 1] and images.labelled
    write_image(class_folder / "loose.png", (9, 9, 9))  # one image outside a class folder: no labels at all
    unlabelled = folder_images(class_folder)
    assert "loose.png" in unlabelled.paths and unlabelled.class_names == []
    assert (unlabelled.labels == NO_LABEL).all() and not unlabelled.labelled


def test_find_images_reads_a_dataset_folder_as_its_test_split(demo_data_path, tmp_path):
    images = find_images(demo_data_path / "demo")
    test_labels = {r.label for r in read_dataset("demo", demo_data_path / "demo").split("test")}
    assert images.dataset == "demo" and images.split == "test" and len(images.paths) == 900
    assert set(images.labels.tolist()) == test_labels and len(test_labels) == 30 and images.boxes.shape == (900, 4)
    with pytest.raises(ConfigError, match="no such folder"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images found"):
        find_images(tmp_path / "empty")


def test_build_skips_unreadable_images_and_stores_what_embed_gives(ensemble, class_folder, tmp_path):
    images = folder_images(class_folder)
    out = tmp_path / "indexes" / "photos"
    summary = build_index(ensemble, images, out, model_source="the-model", batch_size=2)
    assert summary.images == 5 and summary.skipped.count == 1
    assert summary.skipped.examples[0][0].endswith("broken.jpg")
    assert sorted(p.name for p in out.iterdir()) == [EMBEDDINGS_FILE, INFO_FILE, ITEMS_FILE]
    assert [p.name for p in out.parent.iterdir()] == ["photos"]  # no temporary folder left beside it
    index = read_index(out)
    assert index.paths == ["cats/c0.jpg", "cats/c1.jpg", "dogs/d0.png", "dogs/d1.png", "dogs/d2.png"]
    assert index.labels.tolist() == [0, 0, 1, 1, 1] and index.class_names == ["cats", "dogs"]
    expected = ensemble.embed([class_folder / p for p in index.paths])
    assert index.embeddings.dtype == np.float16 and index.embeddings.shape == (5, 16)
    np.testing.assert_allclose(index.embeddings.astype(np.float32), expected.numpy(), atol=2e-3)
    info = json.loads((out / INFO_FILE).read_text())
    assert info["images"] == 5 and info["skipped"] == 1 and info["model"] == "the-model"
    assert info["ensemble"]["config"]["ensemble_size"] == 4 and info["labelled"] and info["classes"] == 2
    assert oct(out.stat().st_mode & 0o777) == "0o755"


def test_an_index_replaces_only_an_index(ensemble, class_folder, tmp_path):
    images = folder_images(class_folder)
    keep = tmp_path / "keep"
    (keep / "precious.txt").parent.mkdir()
    (keep / "precious.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(ConfigError, match="not an antimetric index"):
            build_index(ensemble, images, keep, model_source="m", force=force)
    assert [p.name for p in keep.iterdir()] == ["precious.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not an antimetric index"):
        check_target(tmp_path / "file", force=True)
    out = tmp_path / "index"
    build_index(ensemble, images, out, model_source="first")
    with pytest.raises(ConfigError, match="--force"):
        build_index(ensemble, images, out, model_source="second")
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(ConfigError, match="not an antimetric index"):
        check_target(tmp_path / "link", force=True)
    build_index(ensemble, images, out, model_source="second", force=True)
    assert read_index(out).info["model"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "index", "keep", "link", "photos"]


def test_a_build_that_fails_leaves_nothing(ensemble, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for name in ("a.jpg", "b.png"):
        (root / name).write_bytes(b"\x00" * 10)
    with pytest.raises(ConfigError, match="none of the 2 images"):
        build_index(ensemble, folder_images(root), tmp_path / "index", model_source="m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_read_index_refuses_what_is_not_a_sound_index(ensemble, class_folder, tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        read_index(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not an antimetric index"):
        read_index(class_folder)
    out = tmp_path / "index"
    build_index(ensemble, folder_images(class_folder), out, model_source="m")
    with np.load(out / ITEMS_FILE) as items:
        arrays = dict(items)
    arrays["paths"] = np.array(["../../etc/passwd", *arrays["paths"][1:]])
    np.savez(out / ITEMS_FILE, **arrays)
    with pytest.raises(ConfigError, match="leads outside its root"):
        read_index(out)
    info = json.loads((out / INFO_FILE).read_text())
    (out / INFO_FILE).write_text(json.dumps({**info, "version": 99}))
    with pytest.raises(ConfigError, match="version 99"):
        read_index(out)


def test_only_the_model_that_built_an_index_may_search_it(demo_run, ensemble, class_folder, tmp_path):
    out = tmp_path / "index"
    build_index(ensemble, folder_images(class_folder), out, model_source=str(demo_run))
    index = read_index(out)
    check_model(index, load(demo_run, device="cpu"))  # the same weights, loaded again
    other = load(demo_run, device="cpu")
    with torch.no_grad():
        for parameter in other.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    with pytest.raises(ConfigError, match="other weights"):
        check_model(index, other)
    resized = load(demo_run, device="cpu")
    resized.config.data.image_size = 48
    with pytest.raises(ConfigError, match="image_size 48"):
        check_model(index, resized)
    wider = load(demo_run, device="cpu")
    wider.config.model.ensemble_size = 8
    with pytest.raises(ConfigError, match="32-d embeddings, the index holds 16-d"):
        check_model(index, wider)


def test_a_cropped_ensemble_indexes_a_dataset_through_its_boxes(demo_run, tmp_path):
    described = make_cub(tmp_path / "data" / "cub", n_classes=4, per_class=2, size=32)
    cropped = load(demo_run, device="cpu")
    cropped.config.data.crop_type = "cropped"  # as if trained cropped: its transform squashes the box to a square
    images = find_images(tmp_path / "data" / "cub")
    summary = build_index(cropped, images, tmp_path / "index", model_source="m")
    index = read_index(tmp_path / "index")
    assert summary.info["cropped"] and summary.info["dataset"] == "cub" and index.boxes.shape == (4, 4)
    boxes = {path: box for path, _, split, box in described["records"] if split == "test"}
    crops = [Image.open(index.file(i)).convert("RGB").crop(boxes[path]) for i, path in enumerate(index.paths)]
    np.testing.assert_allclose(index.embeddings.astype(np.float32), cropped.embed(crops).numpy(), atol=2e-3)


@pytest.mark.slow
def test_retrieval_benchmark_runs(class_folder, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.retrieval", "--n", "300", "--dims", "48",
                           "--branches", "4", "--queries", "1", "3", "--repeats", "1", "--images", str(class_folder),
                           "--untrained", "ensemble_size=2", "image_size=32", "--work-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    rows = {(row["queries"], row["variant"]): row for row in result["search"]}
    assert all(rows[(q, "default")]["same_top_k"] and rows[(q, "previous (8192-row chunks)")]["same_top_k"]
               for q in (1, 3))
    assert result["build"]["images"] == 5 and result["build"]["images_per_s"] > 0


def test_a_stale_building_folder_is_removed_and_a_live_one_kept(ensemble, class_folder, tmp_path):
    import fcntl
    import os

    from antimetric.base.temp_folders import LOCK_FILE

    out = tmp_path / "index"
    stale, live, unknown = (tmp_path / f".index.{name}.building" for name in ("dead", "alive", "old"))
    for folder in (stale, live, unknown):
        folder.mkdir()
        (folder / EMBEDDINGS_FILE).write_bytes(b"\0" * 1000)
    (stale / LOCK_FILE).write_text("")  # its writer died: nobody holds the lock
    (live / LOCK_FILE).write_text("")
    holder = os.open(live / LOCK_FILE, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a build still running
    try:
        build_index(ensemble, folder_images(class_folder), out, model_source="m")
    finally:
        os.close(holder)
    assert not stale.exists() and live.exists() and unknown.exists()  # no lock file: whose it is is unknown


def test_a_fifo_in_the_gallery_is_skipped_with_a_reason(ensemble, class_folder, tmp_path):
    fifo = make_fifo(class_folder / "dogs" / "pipe.png")
    summary = build_index(ensemble, folder_images(class_folder), tmp_path / "index", model_source="m")
    reasons = dict(summary.skipped.examples)
    assert summary.images == 5 and "not a regular file" in reasons[str(fifo)]


@pytest.mark.parametrize("damage", ["no embedding_dim", "images a text", "ensemble missing", "short class_names",
                                    "probe of another width", "info a list"])
def test_a_damaged_index_is_one_line(ensemble, class_folder, tmp_path, damage):
    out = tmp_path / "index"
    build_index(ensemble, folder_images(class_folder), out, model_source="m")
    info = json.loads((out / INFO_FILE).read_text())
    with np.load(out / ITEMS_FILE) as items:
        arrays = dict(items)
    if damage == "no embedding_dim":
        del info["embedding_dim"]
    elif damage == "images a text":
        info["images"] = "five"
    elif damage == "ensemble missing":
        del info["ensemble"]
    elif damage == "short class_names":
        arrays["class_names"] = arrays["class_names"][:1]
    elif damage == "probe of another width":
        arrays["probe"] = arrays["probe"][:3]
    (out / INFO_FILE).write_text(json.dumps([info] if damage == "info a list" else info))
    np.savez(out / ITEMS_FILE, **arrays)
    with pytest.raises(ConfigError, match="not an antimetric index|is damaged") as raised:
        index = read_index(out)
        check_model(index, ensemble)
        index.label_name(int(index.labels.max()))
    assert str(out) in str(raised.value)


def test_non_finite_embeddings_are_never_results(ensemble, class_folder, tmp_path):
    from antimetric.retrieval.gallery_images import Failures
    from antimetric.retrieval.search import find_queries, retrieve

    out = tmp_path / "index"
    build_index(ensemble, folder_images(class_folder), out, model_source="m")
    stored = np.load(out / EMBEDDINGS_FILE, mmap_mode="r+")
    stored[1] = np.nan  # a damaged row
    stored.flush()
    del stored
    index = read_index(out)
    results = list(retrieve(ensemble, index, find_queries(class_folder / "dogs", index), 10, Failures()))
    similarities = [n.similarity for result in results for n in result.neighbours]
    assert results and all(np.isfinite(similarities)) and all(len(r.neighbours) == 4 for r in results)
