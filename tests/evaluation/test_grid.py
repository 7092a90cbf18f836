"""Retrieval grids drawn from real image files and hand-made embeddings, read back pixel by pixel."""
import resource
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from antimetric.errors import ConfigError
from antimetric.evaluation.embed import Embeddings
from antimetric.evaluation.grid import (
    CORRECT_COLOUR,
    INCORRECT_COLOUR,
    QUERY_COLOUR,
    UNKNOWN_COLOUR,
    GridImage,
    GridLayout,
    choose_queries,
    class_caption,
    grid_rows_from_embeddings,
    write_grid,
)

THUMB = 48
PLACEHOLDER = (70, 70, 70)
LETTERBOX = (236, 236, 236)


@pytest.fixture
def images(tmp_path):
    """Real files: a wide red JPEG, a tall blue PNG (palette mode), a grayscale JPEG, a cut-short JPEG."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (80, 40), (220, 0, 0)).save(folder / "wide.jpg", quality=95)
    Image.new("RGB", (30, 90), (0, 0, 230)).convert("P").save(folder / "tall.png")
    Image.new("L", (50, 50), 128).save(folder / "gray.jpg")
    whole = (folder / "wide.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[:len(whole) // 3])
    return folder


def _pixel(grid: Image.Image, xy) -> tuple[int, int, int]:
    return grid.getpixel((int(xy[0]), int(xy[1])))


def _frame(grid: Image.Image, layout: GridLayout, row: int, column: int) -> tuple[int, int, int]:
    """A pixel of the cell's frame: its left edge half-way down (clear of the badge, top right)."""
    x, y = layout.frame_origin(row, column)
    return _pixel(grid, (x + 1, y + layout.cell_width // 2))


def _close(colour, expected, tolerance=6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected))


def test_grid_size_follows_rows_and_columns(images, tmp_path):
    def grid(n_rows, n_results):
        rows = [(GridImage(images / "wide.jpg", "q"), [GridImage(images / "gray.jpg", "r", 0.5, True)] * n_results)
                for _ in range(n_rows)]
        return Image.open(write_grid(tmp_path / f"{n_rows}x{n_results}.png", rows, thumb_size=THUMB))

    small, large = grid(2, 8), grid(3, 10)
    layout = GridLayout(2, 8, THUMB)
    assert small.size == layout.size
    assert large.size[0] - small.size[0] == 2 * (layout.cell_width + layout.gap)
    assert large.size[1] - small.size[1] == layout.row_height
    assert small.format == "PNG" and small.mode == "RGB"


def test_frames_say_correct_incorrect_unknown_and_the_query_stands_out(images, tmp_path):
    results = [GridImage(images / "gray.jpg", "2 gray", 0.91, True), GridImage(images / "tall.png", "3", 0.4, False),
               GridImage(images / "wide.jpg", "?", None, None)]
    rows = [(GridImage(images / "wide.jpg", "1 wide"), results), (GridImage(images / "tall.png"), results[:1])]
    grid = Image.open(write_grid(tmp_path / "grid.png", rows, title="run · epoch 3", thumb_size=THUMB)).convert("RGB")
    layout = GridLayout(2, 3, THUMB)
    assert grid.size[1] == layout.size[1]
    assert _frame(grid, layout, 0, 0) == QUERY_COLOUR and _frame(grid, layout, 1, 0) == QUERY_COLOUR
    assert _frame(grid, layout, 0, 1) == CORRECT_COLOUR
    assert _frame(grid, layout, 0, 2) == INCORRECT_COLOUR
    assert _frame(grid, layout, 0, 3) == UNKNOWN_COLOUR
    assert _frame(grid, layout, 1, 2) == (255, 255, 255)  # a shorter row leaves its cells empty

    # the verdict does not rest on colour alone: the badges' white marks differ in shape
    def mark(column):
        left, upper, right, lower = layout.badge_box(0, column)
        inside = round(0.3 * layout.badge)  # well within the disc and its white rim
        disc = grid.crop((left + inside, upper + inside, right - inside, lower - inside))
        return np.asarray(disc).min(axis=2) > 230  # white strokes
    tick, cross, unknown = mark(1), mark(2), mark(3)
    assert tick.sum() > 5 and cross.sum() > 5 and (tick != cross).sum() > 5
    assert unknown.sum() == 0


def test_thumbnails_are_letterboxed_without_distortion_and_cropped_to_their_box(images, tmp_path):
    half_blue = Image.new("RGB", (60, 60), (0, 0, 230))
    half_blue.paste((230, 230, 0), (30, 0, 60, 60))  # right half yellow
    rows = [(GridImage(images / "wide.jpg"), [GridImage(half_blue, box=(30, 0, 60, 60)),
                                              GridImage(torch.zeros(3, 20, 10, dtype=torch.uint8))])]
    grid = Image.open(write_grid(tmp_path / "grid.png", rows, thumb_size=64)).convert("RGB")
    layout = GridLayout(1, 2, 64)
    left, upper, right, lower = layout.thumb_box(0, 0)
    red_rows = [y for y in range(upper, lower) if _close(_pixel(grid, ((left + right) / 2, y)), (220, 0, 0), 30)]
    assert len(red_rows) in (31, 32, 33)  # 80 x 40 -> 64 x 32, centred
    assert _close(_pixel(grid, (left + 2, upper + 2)), LETTERBOX) and _close(_pixel(grid, (left + 2, lower - 2)), LETTERBOX)
    left, upper, right, lower = layout.thumb_box(0, 1)
    boxed = np.asarray(grid.crop((left, upper, right, lower))).astype(int)
    assert _close(_pixel(grid, ((left + right) / 2, (upper + lower) / 2)), (230, 230, 0), 20)
    assert not ((boxed[..., 2] > 150) & (boxed[..., 0] < 80)).any()  # only the boxed (yellow) half is shown
    left, upper, right, lower = layout.thumb_box(0, 2)
    assert _pixel(grid, ((left + right) / 2, (upper + lower) / 2)) == (0, 0, 0)  # a tensor image, tall: 32 x 64
    assert _close(_pixel(grid, (left + 4, (upper + lower) / 2)), LETTERBOX)


def test_an_image_that_cannot_be_read_is_drawn_as_a_placeholder(images, tmp_path):
    bad = [GridImage(images / "cut.jpg", "cut short", 0.3, False), GridImage(tmp_path / "missing.jpg", "gone", 0.2),
           GridImage(b"not an image", "bytes", float("nan")), GridImage(images / "gray.jpg", box=(40, 40, 40, 45))]
    grid = Image.open(write_grid(tmp_path / "grid.png", [(GridImage(images / "gray.jpg"), bad)], thumb_size=THUMB))
    layout = GridLayout(1, 4, THUMB)
    for column in range(1, 5):
        left, upper, right, _ = layout.thumb_box(0, column)
        assert grid.convert("RGB").getpixel(((left + right) // 2, upper + 3)) == PLACEHOLDER, column
    assert _frame(grid.convert("RGB"), layout, 0, 1) == INCORRECT_COLOUR  # its verdict is still shown
    with pytest.raises(ConfigError, match="at least one query row"):
        write_grid(tmp_path / "empty.png", [])


def test_a_failed_write_leaves_the_previous_grid_and_no_partial_file(images, tmp_path):
    path = tmp_path / "grid.png"
    rows = [(GridImage(images / "wide.jpg"), [GridImage(images / "tall.png", "x", 0.5, True)] * 6)] * 3
    write_grid(path, rows[:1], thumb_size=THUMB)
    before = path.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 1024, limits[1]))  # as on a disk that fills up
    try:
        with pytest.raises(OSError):
            write_grid(path, rows, thumb_size=96)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "images"]


def test_query_choice_is_seeded():
    first = choose_queries(500, 8, seed=0)
    assert first == choose_queries(500, 8, seed=0)
    assert first != choose_queries(500, 8, seed=1)
    assert len(set(first)) == 8 and first == sorted(first) and all(0 <= i < 500 for i in first)
    assert choose_queries(5, 8, seed=3) == [0, 1, 2, 3, 4]


def _embeddings(vectors, labels, paths):
    """Features of 2 branches of 2 dimensions, each branch unit-length, in float16 as evaluation keeps them."""
    branches = torch.nn.functional.normalize(torch.tensor(vectors, dtype=torch.float32).view(len(vectors), 2, 2), dim=-1)
    return Embeddings(branches.flatten(1).half(), torch.tensor(labels), paths)


def test_rows_from_embeddings_leave_the_query_out_and_show_cosine_similarity(images, tmp_path):
    angles = [0.0, 0.1, 0.3, 1.5, 1.6, 3.0]
    vectors = [[np.cos(a), np.sin(a), np.cos(a / 2), np.sin(a / 2)] for a in angles]
    paths = [f"images/{i % 2 + 1:03d}.Bird_{i % 2 + 1}/{i}.jpg" for i in range(6)]
    query = _embeddings(vectors, [1, 1, 2, 2, 2, 1], paths)
    boxes = [(0, 0, i + 1, i + 1) for i in range(6)]
    rows = grid_rows_from_embeddings(query, None, tmp_path, ensemble_size=2, query_boxes=boxes, n_queries=6,
                                     top_k=3, seed=0)
    assert len(rows) == 6
    first, results = rows[0]
    assert first.image == tmp_path / paths[0] and first.box == boxes[0] and first.similarity is None
    assert [r.image.name for r in results] == ["1.jpg", "2.jpg", "3.jpg"]  # nearest first, itself left out
    expected = [(np.cos(a) + np.cos(a / 2)) / 2 for a in (0.1, 0.3, 1.5)]  # mean of the branches' cosines
    assert [r.similarity for r in results] == pytest.approx(expected, abs=2e-3)
    assert [r.correct for r in results] == [True, False, False] and results[1].box == boxes[2]
    assert all(len(r) == 3 and q.image not in [x.image for x in r] for q, r in rows)

    gallery = _embeddings(vectors[3:], [2, 2, 1], paths[3:])
    rows = grid_rows_from_embeddings(_embeddings(vectors[:1], [2], paths[:1]), gallery, tmp_path, ensemble_size=2,
                                     top_k=5)
    assert [r.image.name for r in rows[0][1]] == ["3.jpg", "4.jpg", "5.jpg"]  # the gallery has 3
    assert [r.correct for r in rows[0][1]] == [True, True, False] and rows[0][1][0].box is None
    assert rows[0][1][0].similarity == pytest.approx((np.cos(1.5) + np.cos(0.75)) / 2, abs=2e-3)


def test_captions_name_the_class():
    assert class_caption(12, "images/012.Laysan_Albatross/x.jpg") == "12 Laysan Albatross"
    assert class_caption(12, "images/013.Other/x.jpg") == "class 12"
    assert class_caption(7, "car_ims/000123.jpg") == "class 7"


def test_a_users_own_classes_are_shown_by_their_names(tmp_path):
    """A folder's or table's classes are captioned as the user named them, not as 'class 3'."""
    query = _embeddings([[1, 0, 1, 0], [1, 0.1, 1, 0.1], [0, 1, 0, 1]], [0, 0, 1], ["mug/a.jpg", "mug/b.jpg", "x/c.jpg"])
    rows = grid_rows_from_embeddings(query, None, tmp_path, ensemble_size=2, n_queries=3, top_k=2,
                                     class_names={0: "mug", 1: "lamp"})
    captions = {row[0].caption for row in rows} | {image.caption for row in rows for image in row[1]}
    assert captions == {"mug", "lamp"}
    plain = grid_rows_from_embeddings(query, None, tmp_path, ensemble_size=2, n_queries=3, top_k=2)
    assert {row[0].caption for row in plain} == {"class 0", "class 1"}
