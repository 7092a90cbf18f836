"""What the dataset readers share: what a reader module exports, finding the layout's root, parsing its
index files, one-line errors, and the rules an image path and a box must follow (the manifest checks its
own entries by them too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from antimetric.data.records import TEST, TRAIN, Box, DatasetIndex
from antimetric.errors import DatasetLayoutError

_SHOWN_LINE_CHARS = 80
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class LayoutSpec:
    """How an official layout looks and where it comes from, for error messages."""

    title: str  # e.g. 'CUB-200-2011'
    contents: tuple[str, ...]  # what the layout's root holds; folders end with '/'
    source: str  # how to get it; '{dir}' stands for the dataset folder
    marker: str  # the file, relative to the root, that identifies the root

    @property
    def index_files(self) -> tuple[str, ...]:
        """The files among `contents` (folders end with '/'), relative to the root."""
        return tuple(item for item in self.contents if not item.endswith("/"))

    def describe(self, dataset_dir: Path) -> str:
        return (
            f"expected the {self.title} layout: {', '.join(self.contents)}; "
            f"{self.source.format(dir=dataset_dir)}"
        )


@dataclass(frozen=True)
class Reader:
    """What a reader module exports as READER, for the rows of antimetric.data.table that name it."""

    read: Callable[[Path, str], DatasetIndex]  # (dataset folder, dataset name) -> its index
    spec: LayoutSpec  # its index_files are what the manifest watches for edits


@dataclass(frozen=True)
class LayoutFolder:
    """A dataset folder being read: its name, the folder the user gave, and the layout's root in it."""

    name: str
    dataset_dir: Path
    root: Path
    spec: LayoutSpec

    def require(self, relative: str) -> Path:
        """The path of a file or folder (trailing '/') of the layout; raise if it is not there."""
        path = self.root / relative
        if not (path.is_dir() if relative.endswith("/") else path.is_file()):
            raise self.missing(relative, self.root)
        return path

    def missing(self, relative: str, where: Path) -> DatasetLayoutError:
        return DatasetLayoutError(
            f"{self.name}: missing {relative} in {where} ({self.spec.describe(self.dataset_dir)})"
        )

    def malformed(self, relative: str, line_no: int | None, problem: str) -> DatasetLayoutError:
        where = f"line {line_no} of {self.root / relative}" if line_no else f"{self.root / relative}"
        return DatasetLayoutError(f"{self.name}: malformed {where}: {problem}")

    def rows(self, relative: str, columns: tuple[str, ...], *, skip: int = 0) -> list[tuple[int, list[str]]]:
        """The non-blank lines of a whitespace-separated table as (1-based line number, fields).

        `columns` names the expected fields for the error message; the first `skip` non-blank lines
        (headers) are dropped without being checked.
        """
        path = self.require(relative)
        try:
            text = path.read_text(encoding="utf-8-sig", errors="strict")
        except (OSError, UnicodeDecodeError) as error:
            raise self.malformed(relative, None, f"cannot read it as UTF-8 text ({error})") from None
        out: list[tuple[int, list[str]]] = []
        skipped = 0
        for line_no, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if skipped < skip:
                skipped += 1
                continue
            if len(fields) != len(columns):
                raise self.malformed(
                    relative,
                    line_no,
                    f"expected {len(columns)} columns '{' '.join(columns)}', got {len(fields)}: {_shown(line)}",
                )
            out.append((line_no, fields))
        return out

    def image_path(self, relative: str, line_no: int | None, text: str, *, row: str = "") -> str:
        """An image path from an index file, normalised by posix_path; raise if it could leave the dataset.

        `row` names the entry where there are no line numbers (e.g. 'annotation 3: ')."""
        problem = path_problem(text)
        if problem is not None:
            raise self.malformed(relative, line_no, f"{row}path {_shown(text)} {problem}")
        return posix_path(text)

    def box(self, relative: str, line_no: int | None, box: Box, shown: str, *, row: str = "") -> Box:
        """`box` if PIL can crop it, else raise; `shown` is the box as the index file writes it."""
        problem = box_problem(box)
        if problem is not None:
            raise self.malformed(relative, line_no, f"{row}box {shown} {problem}")
        return box

    def integer(self, relative: str, line_no: int | None, column: str, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise self.malformed(relative, line_no, f"{column} is not an integer: {_shown(text)}") from None

    def number(self, relative: str, line_no: int | None, column: str, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise self.malformed(relative, line_no, f"{column} is not a number: {_shown(text)}") from None


def open_layout(name: str, dataset_dir: Path, spec: LayoutSpec) -> LayoutFolder:
    """Locate the layout's root: dataset_dir itself when it holds the marker, else its only subfolder that does.

    This accepts both an archive extracted with its own top folder (data/cub/CUB_200_2011/images.txt)
    and its contents placed directly in the dataset folder (data/cub/images.txt).
    """
    folder = LayoutFolder(name=name, dataset_dir=dataset_dir, root=dataset_dir, spec=spec)
    if (dataset_dir / spec.marker).is_file():
        return folder
    candidates = (
        sorted(sub for sub in dataset_dir.iterdir() if (sub / spec.marker).is_file())
        if dataset_dir.is_dir()
        else []
    )
    if not candidates:
        raise folder.missing(spec.marker, dataset_dir)
    if len(candidates) > 1:
        names = ", ".join(sub.name for sub in candidates)
        raise DatasetLayoutError(
            f"{name}: found {spec.marker} in {len(candidates)} subfolders of {dataset_dir} ({names}); "
            f"keep only one copy of the dataset there"
        )
    return LayoutFolder(name=name, dataset_dir=dataset_dir, root=candidates[0], spec=spec)


def split_by_class_halves(labels: Iterable[int]) -> dict[int, str]:
    """Map each class to TRAIN or TEST: the first half of the sorted distinct ids train, the rest test.

    This is the standard CUB/CARS protocol (classes 1-100 of 200, 1-98 of 196) stated on the ids present,
    so a smaller set in the same layout splits the same way; with an odd count train gets floor(n/2).
    """
    classes = sorted(set(labels))
    n_train = len(classes) // 2
    return {label: TRAIN if i < n_train else TEST for i, label in enumerate(classes)}


def posix_path(path: str) -> str:
    """A relative path from an index file with forward slashes and no leading './'."""
    return re.sub(r"^(\./)+", "", path.replace("\\", "/"))


def path_problem(path: str) -> str | None:
    """Why an image path read from an index file or a manifest may not be used, or None.

    Record paths are joined to the dataset's root, and `prepare --cache-size` writes a copy of each
    image under the same path in the cache folder: an absolute path (POSIX, a Windows drive or a
    \\\\server share) or a '..' component would read, and then overwrite, a file outside the dataset.
    """
    normal = posix_path(path)
    if normal in ("", "."):
        problem = "names no file"
    elif normal.startswith("/"):
        problem = "is absolute"
    elif _DRIVE.match(normal):
        problem = "starts with a drive"
    elif ".." in normal.split("/"):
        problem = "leaves the dataset folder"
    elif "\0" in normal:
        problem = "holds a NUL character"
    else:
        return None
    return f"{problem}; paths must be relative and inside the dataset folder"


def box_problem(box: Box) -> str | None:
    """Why PIL cannot crop `box` (left, upper, right, lower), or None.

    PIL rounds a box to whole pixels, then raises on an inverted one and returns an empty image for an
    empty one, which the transforms cannot resize. Negative coordinates and boxes reaching beyond the
    image are fine: PIL pads them.
    """
    if not all(math.isfinite(value) for value in box):
        return "is not finite"
    left, upper, right, lower = (round(value) for value in box)
    if right <= left or lower <= upper:
        return "is empty or inverted: it holds no pixel once rounded to whole pixels as PIL crops"
    return None


def _shown(text: str) -> str:
    """Text quoted for a one-line message, shortened."""
    text = text.strip()
    if len(text) > _SHOWN_LINE_CHARS:
        text = text[: _SHOWN_LINE_CHARS - 3] + "..."
    return repr(text)
