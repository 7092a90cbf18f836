"""The resized-image cache: written by prepare, read by training only when it matches."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from antimetric.cli import _parser, main
from antimetric.data import transforms
from antimetric.data.cache import CACHE_FOLDER, CacheForm, find_cache, save_cached
from antimetric.data.loading import ImageDataset
from antimetric.data.manifest.prepare import load_manifest, prepare
from antimetric.data.readers.source import benchmark
from antimetric.data.records import ImageRecord
from antimetric.data.table import TABLE
from antimetric.errors import DatasetLayoutError
from antimetric.options import given_options
from antimetric.training.config import RunConfig, resolve
from antimetric.training.session import build_session
from tests.fixtures.datasets import make_cub, make_sop

SIZE = 32
CUB = (TABLE["cub"].mean, TABLE["cub"].std)  # a CUB run's normalisation


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields with detail, so a wrong crop or scale changes many pixels."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def cub(tmp_path):
    """A CUB layout whose images are 60 x 45 or 45 x 60 photos-like JPEGs (boxes inside them)."""
    info = make_cub(tmp_path / "cub", n_classes=6, per_class=3)
    for i, (path, *_rest) in enumerate(info["records"]):
        size = (60, 45) if i % 2 else (45, 60)
        _photo(*size, seed=i).save(info["root"] / path, quality=95)
    return tmp_path, info


@pytest.mark.parametrize("size", [(60, 45), (45, 60), (333, 500), (97, 31)])
@pytest.mark.parametrize("crop_type", ["uncropped", "cropped"])
def test_the_cached_resize_leaves_a_cached_image_unchanged(size, crop_type):
    resize = transforms.resize_transform(crop_type, SIZE)
    once = resize(_photo(*size, seed=1))
    assert np.array_equal(np.asarray(resize(once)), np.asarray(once))


@pytest.mark.parametrize("crop_type", ["uncropped", "cropped"])
def test_training_and_evaluation_read_cached_images_like_the_originals(cub, crop_type):
    data_path, info = cub
    report = prepare(benchmark("cub", data_path), progress=False, cache=CacheForm(crop_type, SIZE))
    index = load_manifest(benchmark("cub", data_path))
    folder = find_cache(data_path / "cub", "cub", CacheForm(crop_type, SIZE), index.root, index.records)
    assert folder == report.cache == data_path / "cub" / CACHE_FOLDER / f"{crop_type}-{SIZE}"
    crop = crop_type == "cropped"
    errors = []
    for transform in (transforms.train_transform(CUB, crop_type, SIZE), transforms.test_transform(CUB, crop_type, SIZE)):
        original = ImageDataset(index.records, index.root, transform, crop=crop)
        cached = ImageDataset(index.records, folder, transform, crop=False)
        uncropped_cache = ImageDataset(index.records, folder, transform, crop=True)
        for i in range(len(index.records)):
            torch.manual_seed(i)  # the same random crop and flip for both
            a, _ = original[i]
            torch.manual_seed(i)
            b, _ = cached[i]
            assert a.shape == b.shape == (3, SIZE, SIZE)
            errors.append((a - b).abs().mean().item())
            if crop:  # cropping the box a second time would be caught
                torch.manual_seed(i)
                assert (a - uncropped_cache[i][0]).abs().mean() > 0.1
    assert max(errors) < 0.04  # JPEG rounding only (measured 0.026 uncropped, 0.016 cropped)


def _found(data_path, form):
    index = load_manifest(benchmark("cub", data_path))
    return find_cache(data_path / "cub", "cub", form, index.root, index.records)


def test_a_cache_is_used_only_for_its_form_and_the_same_images(cub):
    data_path, info = cub
    form = CacheForm("uncropped", SIZE)
    report = prepare(benchmark("cub", data_path), progress=False, cache=form)
    assert _found(data_path, form) == report.cache
    assert _found(data_path, CacheForm("uncropped", SIZE + 1)) is None
    assert _found(data_path, CacheForm("cropped", SIZE)) is None

    (info["root"] / info["records"][4][0]).write_bytes(b"not a jpeg")
    prepare(benchmark("cub", data_path), progress=False)  # the manifest now leaves that image out
    assert len(load_manifest(benchmark("cub", data_path)).records) == len(info["records"]) - 1
    assert _found(data_path, form) is None

    report = prepare(benchmark("cub", data_path), progress=False, cache=form)
    assert [image.path for image in report.unreadable] == [info["records"][4][0]]
    assert _found(data_path, form) == report.cache
    (report.cache / "cache.json").unlink()  # as an interrupted prepare leaves it
    assert _found(data_path, form) is None


def test_a_replaced_image_or_a_changed_box_makes_the_cache_stale(cub):
    data_path, info = cub
    form = CacheForm("cropped", SIZE)
    prepare(benchmark("cub", data_path), progress=False, cache=form)
    _photo(80, 48, seed=99).save(info["root"] / info["records"][2][0], quality=95)  # same path, other image
    assert _found(data_path, form) is None

    prepare(benchmark("cub", data_path), progress=False, cache=form)
    assert _found(data_path, form) is not None
    boxes = info["root"] / "bounding_boxes.txt"
    boxes.write_text(boxes.read_text().replace("1 ", "1 1", 1))  # first image's box moves
    prepare(benchmark("cub", data_path), progress=False)
    assert _found(data_path, form) is None


def test_a_failed_prepare_leaves_no_usable_cache(cub, capsys):
    data_path, info = cub
    form = CacheForm("uncropped", SIZE)
    report = prepare(benchmark("cub", data_path), progress=False, cache=form)
    blocked = report.cache / info["records"][5][0]
    blocked.unlink()
    (blocked / "in-the-way").mkdir(parents=True)  # a folder where a cached file must go
    with pytest.raises(DatasetLayoutError, match="cannot write the cached copy of"):
        prepare(benchmark("cub", data_path), progress=False, cache=form)
    assert _found(data_path, form) is None
    assert not list(report.cache.rglob("*.tmp"))  # no temporary file left behind

    code = main(["prepare", "--data-path", str(data_path), "--data-name", "cub", "--cache-size", str(SIZE)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cub: cannot write the cached copy") and err.count("\n") == 1


def test_an_empty_box_is_a_clear_error_before_anything_is_cached(cub, capsys):
    data_path, info = cub
    boxes = info["root"] / "bounding_boxes.txt"
    lines = boxes.read_text().split("\n")
    lines[0] = "1 5.0 5.0 0.2 10.0"  # 0.2 pixels wide
    boxes.write_text("\n".join(lines))
    code = main(["prepare", "--data-path", str(data_path), "--data-name", "cub", "--cache-size", str(SIZE),
                 "--crop-type", "cropped"])
    err = capsys.readouterr().err
    assert code == 2 and "holds no pixel" in err and err.count("\n") == 1


def test_a_training_session_reads_a_matching_cache_unless_told_not_to(cub, tmp_path):
    data_path, info = cub
    report = prepare(benchmark("cub", data_path), progress=False, cache=CacheForm("cropped", SIZE))
    values = dict(data_name="cub", data_path=str(data_path), output_dir=str(tmp_path / "runs"), crop_type="cropped",
                  image_size=SIZE, backbone="tiny", ensemble_size=2, meta_class_size=2, pretrained=False,
                  num_epochs=1, num_workers=0, batch_size=4)
    session = build_session(resolve(RunConfig.from_flat(values)))
    assert session.image_root == report.cache
    assert session.train_loader.dataset.root == report.cache and not session.train_loader.dataset.crop
    assert session.test.query.dataset.root == report.cache
    images, _ = next(iter(session.train_loader))
    assert images.shape == (4, 3, SIZE, SIZE)

    plain = build_session(resolve(RunConfig.from_flat({**values, "image_cache": False})))
    assert plain.image_root == info["root"].resolve() and plain.train_loader.dataset.crop
    other_size = build_session(resolve(RunConfig.from_flat({**values, "image_size": SIZE * 2})))
    assert other_size.image_root == info["root"].resolve()


def test_prepare_writes_a_cache_from_the_command_line(cub, capsys):
    data_path, info = cub
    code = main(["prepare", "--data-path", str(data_path), "--data-name", "cub", "--cache-size", str(SIZE), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    cached = data_path / "cub" / CACHE_FOLDER / f"uncropped-{SIZE}"
    assert summary["cache"] == str(cached)
    with Image.open(cached / info["records"][1][0]) as image:  # a 60 x 45 original
        assert image.format == "JPEG" and image.size == (42, SIZE)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cache-size", "0"], "--cache-size"),
        (["--cache-size", "big"], "--cache-size"),
        (["--cache-size", "5000"], "--cache-size"),
        (["--crop-type", "cropped"], "add --cache-size"),
        (["--cache-size", "32", "--crop-type", "cropped", "--data-name", "sop"], "sop does not have"),
    ],
)
def test_bad_cache_options_are_one_line_and_exit_2(cub, capsys, extra, message):
    data_path, _ = cub
    try:
        code = main(["prepare", "--data-path", str(data_path), "--data-name", "cub", *extra])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (data_path / "cub" / CACHE_FOLDER).exists()


def test_train_takes_no_image_cache():
    assert given_options(_parser().parse_args(["train", "--no-image-cache"])) == {"image_cache": False}
    assert "image_cache" not in given_options(_parser().parse_args(["train"])) and RunConfig().data.image_cache


def test_an_unwritable_cache_folder_is_a_clear_error(cub):
    data_path, _ = cub
    (data_path / "cub" / CACHE_FOLDER).write_text("a file where the cache folder goes")
    with pytest.raises(DatasetLayoutError, match="cannot write the image cache"):
        prepare(benchmark("cub", data_path), progress=False, cache=CacheForm("uncropped", SIZE))


def test_a_deleted_cached_file_makes_the_cache_unused(cub):
    data_path, info = cub
    form = CacheForm("uncropped", SIZE)
    report = prepare(benchmark("cub", data_path), progress=False, cache=form)
    assert _found(data_path, form) == report.cache
    (report.cache / info["records"][3][0]).unlink()
    assert _found(data_path, form) is None  # training then reads the originals


def test_the_cache_writes_nothing_outside_its_folder(tmp_path):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    victim = outside / "victim.jpg"
    victim.write_bytes(b"not yours")
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="outside the cache folder"):
        save_cached(image, ImageRecord("../outside/victim.jpg", 1, "train"), folder)
    (folder / "images").symlink_to(outside, target_is_directory=True)  # a link planted in the cache folder
    with pytest.raises(ValueError, match="outside the cache folder"):
        save_cached(image, ImageRecord("images/victim.jpg", 1, "train"), folder)
    assert victim.read_bytes() == b"not yours" and sorted(p.name for p in outside.iterdir()) == ["victim.jpg"]

    save_cached(image, ImageRecord("images2/ok.jpg", 1, "train"), folder)
    assert (folder / "images2" / "ok.jpg").is_file()


def test_prepare_with_a_cache_leaves_files_outside_the_dataset_alone(tmp_path, capsys):
    """An index path climbing out of the dataset once read one file and overwrote another with its resized copy."""
    info = make_sop(tmp_path / "a" / "b" / "sop", n_classes=2, per_class=2)
    victims = [tmp_path / "victim.jpg", tmp_path / "a" / "b" / "victim.jpg"]  # read from, written to
    for victim in victims:
        _photo(60, 45, seed=7).save(victim, quality=95)
    before = [victim.read_bytes() for victim in victims]
    listing = info["root"] / "Ebay_train.txt"
    lines = listing.read_text().split("\n")
    lines[1] = "1 1 1 ../../../victim.jpg"
    listing.write_text("\n".join(lines))

    code = main(["prepare", "--data-path", str(tmp_path / "a" / "b"), "--data-name", "sop", "--cache-size", "16"])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: sop: malformed line 2 of {listing}: path '../../../victim.jpg' leaves the dataset")
    assert [victim.read_bytes() for victim in victims] == before
