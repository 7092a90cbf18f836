"""A retrieval grid: for a few queries, the query and its top-K gallery images as one PNG picture.

One row per query: the query in a blue frame, then its results best first, each framed green (same
class as the query), red (another class) or grey (labels unknown), with a tick, a cross or nothing in
a badge so that the verdict does not rest on colour alone. Under each thumbnail: its caption (class
label or file name) and, for results, the similarity to the query. Thumbnails are letterboxed to a
square without distortion; an image that cannot be read is drawn as a placeholder.

The similarity shown by `grid_rows_from_embeddings` is the cosine similarity of the concatenated
embeddings (antimetric.model.ensemble.cosine), ranked exactly as evaluation ranks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from antimetric.base.atomic import atomic_open
from antimetric.data.images import ImageInput, as_rgb
from antimetric.errors import AntimetricError, ConfigError
from antimetric.evaluation.embed import Embeddings
from antimetric.evaluation.neighbours import nearest
from antimetric.model.ensemble import cosine

__all__ = ["GridImage", "GridLayout", "choose_queries", "class_caption", "grid_rows_from_embeddings", "is_grid",
           "write_grid"]

QUERY_COLOUR = (33, 102, 172)  # blue
CORRECT_COLOUR = (26, 150, 65)  # green
INCORRECT_COLOUR = (215, 48, 39)  # red
UNKNOWN_COLOUR = (150, 150, 150)  # grey
_BACKGROUND, _LETTERBOX, _INK, _FAINT_INK = (255, 255, 255), (236, 236, 236), (20, 20, 20), (95, 95, 95)
_PLACEHOLDER, _QUERY_PANEL = (70, 70, 70), (229, 238, 249)
_CAPTION_LINES = 2
_LEGEND = ((CORRECT_COLOUR, True, "same class"), (INCORRECT_COLOUR, False, "other class"),
           (UNKNOWN_COLOUR, None, "label unknown"))
_SIMILARITY_NOTE = "sim: cosine similarity to the query"
_MARK_KEY, GRID_MARK = "Software", "antimetric retrieval grid"


@dataclass
class GridImage:
    image: ImageInput  # a path, encoded bytes, a PIL image or a tensor (antimetric.data.images.ImageInput)
    caption: str = ""  # short text under the thumbnail (class label or file name)
    similarity: float | None = None  # to the row's query; grid_rows_from_embeddings gives the cosine
    correct: bool | None = None  # same class as the query; None when labels are unknown
    box: tuple[float, float, float, float] | None = None  # (left, upper, right, lower) crop applied before showing


Row = tuple[GridImage, Sequence[GridImage]]


class GridLayout:
    """Where everything goes in a grid of n_rows queries and up to n_results results each."""

    def __init__(self, n_rows: int, n_results: int, thumb_size: int, min_width: int = 0) -> None:
        self.thumb = thumb_size
        self.border = max(3, round(thumb_size / 28))
        self.text_size = max(10, round(thumb_size / 9))
        self.line_height = self.text_size + 4
        self.title_size = self.text_size + 5
        self.margin = max(8, thumb_size // 8)
        self.gap = max(6, thumb_size // 14)  # between result columns
        self.query_gap = 3 * self.gap  # between the query column and the results (a rule is drawn there)
        self.cell_width = thumb_size + 2 * self.border
        self.badge = max(14, thumb_size // 6)  # the verdict's disc, in a result's top right corner
        self.row_height = self.cell_width + _CAPTION_LINES * self.line_height + 2 * self.gap
        self.header_top = self.margin + self.title_size + 6 + self.line_height + self.gap  # below title, legend
        self.top = self.header_top + self.line_height + 4  # the first row's frame
        self.n_rows, self.n_results = n_rows, n_results
        grid_width = 2 * self.margin + (1 + n_results) * self.cell_width + max(n_results - 1, 0) * self.gap \
            + (self.query_gap if n_results else 0)
        self.size = (max(grid_width, min_width), self.top + n_rows * self.row_height + self.margin - self.gap)

    def frame_origin(self, row: int, column: int) -> tuple[int, int]:
        """Top-left corner of the frame (border included) of a cell; column 0 is the query, 1..K the results."""
        x = self.margin + column * self.cell_width
        if column:
            x += self.query_gap + (column - 1) * self.gap
        return x, self.top + row * self.row_height

    def thumb_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """The thumbnail's square inside the frame: (left, upper, right, lower), right and lower exclusive."""
        x, y = self.frame_origin(row, column)
        return x + self.border, y + self.border, x + self.border + self.thumb, y + self.border + self.thumb

    def badge_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        _, upper, right, _ = self.thumb_box(row, column)
        return right - self.badge - 2, upper + 2, right - 2, upper + 2 + self.badge


def write_grid(path: Path, rows: Sequence[Row], *, title: str = "", thumb_size: int = 112) -> Path:
    """Draw rows of (query, results best first) as a PNG at `path`, written whole or not at all."""
    if thumb_size < 32:
        raise ConfigError(f"a retrieval grid's thumb_size must be at least 32 pixels, not {thumb_size}")
    if not rows:
        raise ConfigError("a retrieval grid needs at least one query row")
    layout = GridLayout(len(rows), max(len(results) for _, results in rows), thumb_size)
    text, title_font = _font(layout.text_size), _font(layout.title_size)
    heading = max(title_font.getlength(title), _legend_width(layout, text))  # wider than the grid: widen the canvas
    layout = GridLayout(layout.n_rows, layout.n_results, thumb_size, min(int(heading) + 2 * layout.margin, 4000))
    canvas = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_heading(draw, layout, title, title_font, text)
    for row, (query, results) in enumerate(rows):
        _draw_cell(canvas, draw, layout, row, 0, query, text, is_query=True)
        for column, result in enumerate(results, start=1):
            _draw_cell(canvas, draw, layout, row, column, result, text, is_query=False)
    path = Path(path)
    mark = PngImagePlugin.PngInfo()
    mark.add_text(_MARK_KEY, GRID_MARK)  # how `retrieve --grid` knows a file it may replace
    if title:
        mark.add_text("Title", title)  # PNG's own keyword: the heading as text, for viewers and tests
    with atomic_open(path, "wb") as handle:
        canvas.save(handle, format="PNG", compress_level=1, pnginfo=mark)  # 4x faster than the default, 10 % larger
    return path


def is_grid(path: Path) -> bool:
    """A regular file (not a link) that write_grid wrote: a PNG whose Software text says so."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with Image.open(path) as picture:
            return picture.format == "PNG" and picture.text.get(_MARK_KEY) == GRID_MARK
    except (OSError, ValueError, SyntaxError):
        return False


def _draw_heading(draw: ImageDraw.ImageDraw, layout: GridLayout, title: str, title_font, font) -> None:
    width = layout.size[0] - 2 * layout.margin
    draw.text((layout.margin, layout.margin), _fit(title, title_font, width), fill=_INK, font=title_font)
    # the legend: what the frames and badges mean, and what the number under a result is
    x, y = layout.margin, layout.margin + layout.title_size + 6
    badge = layout.line_height - 2
    for colour, mark, words in _LEGEND:
        _draw_badge(draw, (x, y), badge, colour, mark)
        x += badge + 4
        draw.text((x, y + 1), words, fill=_FAINT_INK, font=font)
        x += int(font.getlength(words)) + 3 * layout.gap
    draw.text((x, y + 1), _SIMILARITY_NOTE, fill=_FAINT_INK, font=font)
    y = layout.header_top
    x = layout.frame_origin(0, 0)[0]  # a pale panel behind the queries sets them apart from the results
    draw.rectangle([x - layout.gap, y - 4, x + layout.cell_width + layout.gap - 1,
                    layout.size[1] - layout.margin + layout.gap // 2], fill=_QUERY_PANEL)
    for column in range(layout.n_results + 1):
        x0 = layout.frame_origin(0, column)[0]
        label = "query" if column == 0 else f"#{column}"
        draw.text((x0 + layout.cell_width / 2, y), label, fill=QUERY_COLOUR if column == 0 else _INK, font=font,
                  anchor="ma")
    if layout.n_results:  # a rule between the queries and their results
        x = layout.frame_origin(0, 1)[0] - layout.query_gap // 2
        draw.line([(x, layout.top), (x, layout.size[1] - layout.margin)], fill=(200, 200, 200), width=1)


def _legend_width(layout: GridLayout, font) -> float:
    badges = len(_LEGEND) * (layout.line_height + 2 + 3 * layout.gap)
    return badges + sum(font.getlength(words) for _, _, words in _LEGEND) + font.getlength(_SIMILARITY_NOTE)


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, layout: GridLayout, row: int, column: int,
               item: GridImage, font, *, is_query: bool) -> None:
    x, y = layout.frame_origin(row, column)
    colour = QUERY_COLOUR if is_query else _verdict_colour(item.correct)
    draw.rectangle([x, y, x + layout.cell_width - 1, y + layout.cell_width - 1], fill=colour)
    canvas.paste(_thumbnail(item, layout.thumb, font), layout.thumb_box(row, column)[:2])
    if not is_query:
        _draw_badge(draw, layout.badge_box(row, column)[:2], layout.badge, colour, item.correct)
    caption_y = y + layout.cell_width + 3
    draw.text((x, caption_y), _fit(item.caption, font, layout.cell_width), fill=_INK, font=font)
    second = _file_name(item.image) if is_query else _similarity_text(item.similarity)
    draw.text((x, caption_y + layout.line_height), _fit(second, font, layout.cell_width), fill=_FAINT_INK, font=font)


def _file_name(image: ImageInput) -> str:
    return Path(image).name if isinstance(image, (str, Path)) else "query"


def _verdict_colour(correct: bool | None) -> tuple[int, int, int]:
    return UNKNOWN_COLOUR if correct is None else CORRECT_COLOUR if correct else INCORRECT_COLOUR


def _similarity_text(similarity: float | None) -> str:
    if similarity is None:
        return ""
    return f"sim {similarity:.2f}" if np.isfinite(similarity) else "sim n/a"


def _draw_badge(draw: ImageDraw.ImageDraw, corner: tuple[float, float], size: int, colour, mark: bool | None) -> None:
    """A filled disc with a white tick (True), a white cross (False) or no mark (None): shapes, not glyphs,
    which the default font lacks."""
    x, y = corner
    draw.ellipse([x, y, x + size, y + size], fill=colour, outline=(255, 255, 255), width=max(1, size // 10))
    stroke = max(2, size // 7)
    if mark is True:
        draw.line([(x + 0.25 * size, y + 0.52 * size), (x + 0.43 * size, y + 0.70 * size),
                   (x + 0.75 * size, y + 0.32 * size)], fill=(255, 255, 255), width=stroke, joint="curve")
    elif mark is False:
        low, high = 0.31 * size, 0.69 * size
        draw.line([(x + low, y + low), (x + high, y + high)], fill=(255, 255, 255), width=stroke)
        draw.line([(x + low, y + high), (x + high, y + low)], fill=(255, 255, 255), width=stroke)


def _thumbnail(item: GridImage, size: int, font) -> Image.Image:
    """The image (cropped to its box) scaled to fit a size x size square, centred on a neutral letterbox;
    a placeholder saying so when it cannot be read."""
    try:
        image = as_rgb(item.image)
        if item.box is not None:
            image = image.crop(tuple(item.box))
        if image.width < 1 or image.height < 1:
            raise ValueError("empty image")
    except (AntimetricError, OSError, ValueError) as error:
        return _placeholder(size, font, error)
    scale = size / max(image.size)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(fitted, Image.Resampling.BICUBIC, reducing_gap=3.0)
    square = Image.new("RGB", (size, size), _LETTERBOX)
    square.paste(image, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
    return square


def _placeholder(size: int, font, error: Exception) -> Image.Image:
    square = Image.new("RGB", (size, size), _PLACEHOLDER)
    draw = ImageDraw.Draw(square)
    draw.line([(0, 0), (size, size)], fill=(110, 110, 110), width=2)
    draw.line([(0, size), (size, 0)], fill=(110, 110, 110), width=2)
    draw.text((size / 2, size / 2), "unreadable", fill=(255, 255, 255), font=font, anchor="mm")
    return square


def _fit(text: str, font, width: float) -> str:
    """`text`, cut short with an ellipsis where it would be wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType: the small bitmap font
        return ImageFont.load_default()


def choose_queries(n_items: int, n_queries: int, seed: int) -> list[int]:
    """A seeded choice of min(n_queries, n_items) distinct query indices, in increasing order."""
    chosen = np.random.default_rng(seed).choice(n_items, size=min(n_queries, n_items), replace=False)
    return sorted(int(i) for i in chosen)


def grid_rows_from_embeddings(query: Embeddings, gallery: Embeddings | None, image_root: Path, *, ensemble_size: int,
                              query_boxes: Sequence | None = None, gallery_boxes: Sequence | None = None,
                              n_queries: int = 8, top_k: int = 8, seed: int = 0,
                              class_names: dict[int, str] | None = None) -> list[Row]:
    """Rows for write_grid: a seeded choice of queries and each one's top_k results, leaving the query
    itself out when there is no gallery (as evaluation does). Paths in the embeddings are relative to
    image_root; boxes (one per image, or None) are applied before showing. The similarity is the cosine.
    class_names: a user's own classes by label (DatasetIndex.class_names), shown under each image."""
    chosen = choose_queries(len(query.paths), n_queries, seed)
    leave_one_out = gallery is None
    gallery = query if gallery is None else gallery
    gallery_boxes = query_boxes if leave_one_out else gallery_boxes
    sims, indices = nearest(query.features[chosen], gallery.features, top_k + 1 if leave_one_out else top_k)
    rows = []
    for row, q in enumerate(chosen):
        label = int(query.labels[q])
        results = []
        for sim, g in zip(sims[row].tolist(), indices[row].tolist()):
            if g < 0 or (leave_one_out and g == q):
                continue
            results.append(_grid_image(gallery, g, image_root, gallery_boxes, cosine(sim, ensemble_size), label,
                                       class_names))
        rows.append((_grid_image(query, q, image_root, query_boxes, None, None, class_names), results[:top_k]))
    return rows


def _grid_image(embeddings: Embeddings, i: int, image_root: Path, boxes: Sequence | None, similarity: float | None,
                query_label: int | None, class_names: dict[int, str] | None) -> GridImage:
    path, label = embeddings.paths[i], int(embeddings.labels[i])
    box = boxes[i] if boxes is not None else None
    correct = None if query_label is None else label == query_label
    caption = class_names[label] if class_names and label in class_names else class_caption(label, path)
    return GridImage(Path(image_root) / path, caption, similarity, correct, box)


def class_caption(label: int, path: str) -> str:
    """'class 12', or the class's name where the image's folder gives it in CUB's form ('012.Name')."""
    folder = Path(path).parent.name
    match = re.fullmatch(r"0*(\d+)\.(.+)", folder)
    if match and int(match.group(1)) == label:
        return f"{label} {match.group(2).replace('_', ' ')}"
    return f"class {label}"
