import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from antimetric.data.images import open_rgb
from tests.fixtures.datasets import make_cars, make_cub
from tests.fixtures.images import bomb_png, fifo


def _save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


@pytest.mark.parametrize("make", [make_cub, make_cars])
def test_grayscale_and_cmyk_jpegs_of_the_fixtures_decode_to_rgb(tmp_path, make):
    info = make(tmp_path)
    assert info["gray"] and info["cmyk"]
    for relative, stored_mode in [*((p, "L") for p in info["gray"]), *((p, "CMYK") for p in info["cmyk"])]:
        with Image.open(info["root"] / relative) as raw:
            assert raw.mode == stored_mode
        image = open_rgb(info["root"] / relative)
        assert image.mode == "RGB"
        assert image.size == (24, 24)


def test_cmyk_keeps_the_colour(tmp_path):
    path = _save(tmp_path / "red.jpg", Image.new("RGB", (16, 16), (220, 20, 20)).convert("CMYK"), quality=95)
    r, g, b = open_rgb(path).getpixel((8, 8))
    assert r > 180 and g < 60 and b < 60


@pytest.mark.parametrize(
    "image, suffix",
    [
        (Image.new("RGBA", (8, 8), (10, 200, 30, 0)), ".png"),
        (Image.new("LA", (8, 8), (90, 128)), ".png"),
        (Image.new("1", (8, 8), 1), ".png"),
        (Image.new("RGB", (8, 8), (10, 200, 30)).quantize(4), ".png"),
    ],
    ids=["RGBA", "LA", "1", "P"],
)
def test_other_modes_decode_to_rgb(tmp_path, image, suffix):
    image.info.pop("transparency", None)
    rgb = open_rgb(_save(tmp_path / f"x{suffix}", image))
    assert rgb.mode == "RGB"
    assert rgb.size == (8, 8)


def test_palette_with_transparency_decodes_to_rgb_without_warning(tmp_path, recwarn):
    rgba = Image.new("RGBA", (8, 8), (10, 200, 30, 255))
    rgba.putpixel((0, 0), (250, 0, 0, 0))
    path = _save(tmp_path / "p.png", rgba.quantize(4))
    with Image.open(path) as raw:
        assert raw.mode == "P" and isinstance(raw.info.get("transparency"), bytes)
    rgb = open_rgb(path)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((4, 4)) == pytest.approx((10, 200, 30), abs=8)
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(ramp))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    values = np.asarray(open_rgb(path))[..., 0]
    assert values.min() == 0
    assert 240 <= values.max() <= 255
    assert len(np.unique(values)) > 32  # PIL's plain convert would clip nearly all of them to 255


def test_image_is_decoded_before_returning(tmp_path):
    path = _save(tmp_path / "a.jpg", Image.new("RGB", (8, 8), (1, 2, 3)))
    image = open_rgb(path)
    path.unlink()
    assert image.load() is not None
    assert image.getpixel((4, 4)) == pytest.approx((1, 2, 3), abs=3)


def test_truncated_jpeg_raises(tmp_path):
    good = _save(tmp_path / "good.jpg", Image.effect_noise((64, 64), 50).convert("RGB"), quality=95)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(OSError):
        open_rgb(broken)


def test_not_an_image_raises(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("not an image")
    with pytest.raises(OSError):
        open_rgb(path)


def test_a_float_image_in_0_to_1_is_scaled_not_black(tmp_path):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    path = _save(tmp_path / "float.tiff", Image.fromarray(ramp))
    with Image.open(path) as raw:
        assert raw.mode == "F"
    values = np.asarray(open_rgb(path))[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) == 64


@pytest.mark.parametrize("width, height", [(14000, 14000), (10000, 9000)], ids=["over PIL's error", "over its warning"])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(width, height))
    with pytest.raises(ValueError, match=r"more than the 89,478,485 pixels an image may have \(a decompression bomb\?\); "
                                         r"resize it$"):
        open_rgb(path)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    outcome = []

    def read(path):
        try:
            open_rgb(path)
        except (OSError, ValueError) as error:
            outcome.append(error)

    path = tmp_path / kind
    with fifo(path) if kind == "fifo" else contextlib.nullcontext(path.mkdir()):
        reader = threading.Thread(target=read, args=(path,), daemon=True)
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "open_rgb blocked on a FIFO"
    assert len(outcome) == 1 and str(outcome[0]) == "not a regular file", outcome


def test_a_file_or_bytes_over_the_byte_limit_are_refused_before_decoding(tmp_path):
    from antimetric.data.images import decode_rgb

    path = _save(tmp_path / "a.png", Image.new("RGB", (16, 16), (1, 2, 3)))
    size = path.stat().st_size
    assert open_rgb(path, max_bytes=size).size == (16, 16)
    assert decode_rgb(path.read_bytes(), max_bytes=size).size == (16, 16)
    with pytest.raises(ValueError, match=f"{size:,} bytes is more than the {size - 1:,} an image may have"):
        open_rgb(path, max_bytes=size - 1)
    with pytest.raises(ValueError, match=f"{size:,} bytes is more than the {size - 1:,}"):
        decode_rgb(path.read_bytes(), max_bytes=size - 1)
