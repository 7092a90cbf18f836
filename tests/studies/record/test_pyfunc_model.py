"""The pyfunc model reads only what it is sent: image bytes, and files only under the image root it is loaded
with; every decode within bounds on bytes, pixels and time; every error one line. A model saved from the
shared demo run and loaded by MLflow (no server: test_serve.py starts one)."""
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

import antimetric
from antimetric.retrieval.trained import load
from studies.record.pyfunc_model import save
from tests.fixtures.images import bomb_png, fifo


@pytest.fixture(scope="module")
def saved_model(demo_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyfunc") / "model"
    save(folder, demo_run / "best.pt", load(demo_run, device="cpu").embedding_dim)
    return folder


@pytest.fixture
def image_root(demo_data_path, tmp_path):
    """A folder of two demo images, a text file, a symlink out of it, and a decompression bomb."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    images = sorted((demo_data_path / "demo").rglob("*.jpg"))[:2]
    (root / "a.jpg").write_bytes(images[0].read_bytes())
    (root / "sub" / "b.jpg").write_bytes(images[1].read_bytes())
    (root / "notes.jpg").write_text("not an image")
    (root / "passwd.jpg").symlink_to("/etc/passwd")
    (root / "bomb.png").write_bytes(bomb_png(14000, 14000))
    (tmp_path / "outside.jpg").write_bytes(images[0].read_bytes())
    return root


def _error(model, frame: pd.DataFrame) -> str:
    with pytest.raises(MlflowException) as error:
        model.predict(frame)
    assert error.value.get_http_status_code() == 400, error.value.message
    assert "\n" not in error.value.message
    return error.value.message


def test_without_an_image_root_paths_are_refused_alike(saved_model, image_root, tmp_path):
    model = mlflow.pyfunc.load_model(str(saved_model))
    answers = {path: _error(model, pd.DataFrame({"path": [path]}))
               for path in (str(image_root / "a.jpg"), "/etc/passwd", "/etc/shadow", str(tmp_path / "missing.jpg"))}
    assert {answer.replace(path, "PATH") for path, answer in answers.items()} == {
        "row 0: this model reads no files; send the image's bytes in the column `image`, or load it with an "
        "`image_root` to read files under that folder"}
    expected = antimetric.load(saved_model / "artifacts" / "best.pt", device="cpu").embed(image_root / "a.jpg")
    by_bytes = model.predict(pd.DataFrame({"image": [(image_root / "a.jpg").read_bytes()]}))
    np.testing.assert_allclose(by_bytes, expected.numpy(), rtol=0, atol=1e-6)


def test_under_an_image_root_only_its_regular_files_are_read(saved_model, image_root, tmp_path):
    model = mlflow.pyfunc.load_model(str(saved_model), model_config={"image_root": str(image_root)})
    expected = antimetric.load(saved_model / "artifacts" / "best.pt", device="cpu").embed(
        [image_root / "a.jpg", image_root / "sub" / "b.jpg"]).numpy()
    inside = model.predict(pd.DataFrame({"path": [str(image_root / "a.jpg"), "sub/b.jpg"]}))  # absolute, relative
    np.testing.assert_allclose(inside, expected, rtol=0, atol=1e-6)
    outside = [str(tmp_path / "outside.jpg"), "/etc/passwd", "/etc/shadow", "/no/such/file.jpg", "../outside.jpg",
               "sub/../../outside.jpg", "passwd.jpg", "bad\0path"]
    answers = {path: _error(model, pd.DataFrame({"path": [path]})) for path in outside}
    assert {answer.replace(path, "PATH") for path, answer in answers.items()} == {  # no oracle of what exists
        "row 0: PATH is outside the folder this model reads images from; send the image's bytes in the column `image`"}
    says = {"missing.jpg": "cannot read the image missing.jpg (No such file or directory)",
            "notes.jpg": "cannot read the image notes.jpg (not an image file Pillow can read)",
            "sub": "cannot read the image sub (not a regular file)", "bomb.png": "more than the 89,478,485 pixels an image may have"}
    for path, message in says.items():
        assert message in _error(model, pd.DataFrame({"path": [path]}))
    with fifo(image_root / "pipe.jpg"):
        assert "cannot read the image pipe.jpg (not a regular file)" in _error(model, pd.DataFrame({"path": ["pipe.jpg"]}))


def test_bytes_are_decoded_within_their_bounds(saved_model, tmp_path):
    big = tmp_path / "big.png"
    Image.effect_noise((3000, 3000), 64).save(big)  # tens of milliseconds to decode
    size = os.path.getsize(big)
    model = mlflow.pyfunc.load_model(str(saved_model), model_config={"max_image_bytes": size - 1})
    assert "more than the 89,478,485 pixels" in _error(model, pd.DataFrame({"image": [bomb_png(14000, 14000)]}))
    assert f"{size:,} bytes is more than the {size - 1:,}" in _error(model, pd.DataFrame({"image": [big.read_bytes()]}))
    assert _error(model, pd.DataFrame({"other": [1]})).startswith("give the images in a column `image`")
    hasty = mlflow.pyfunc.load_model(str(saved_model), model_config={"decode_timeout_s": 1e-6})
    assert _error(hasty, pd.DataFrame({"image": [big.read_bytes()]})) == \
        "row 0: decoding the image bytes took over 1e-06 s; send a smaller image"
