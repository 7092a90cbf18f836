"""The manifest file itself: its JSON form, its checks when read back, and whether it is still up to date.

Format 3, in the dataset's folder (readers/source.py's MANIFEST_NAME; a table's: named after the table,
DataSource.manifest):

    format       MANIFEST_FORMAT
    dataset      the dataset's name
    root         the layout's root, relative to the dataset folder ('.' when it is the folder itself)
    index_files  {path relative to root: [size, mtime_ns]} of what the reader parsed: a layout's index files, a
                 table (an absolute path when it lies outside the root), or every folder of a folder of classes
    class_names  {label: name} of a user's own classes ({} for a benchmark)
    records      [path relative to root, label, split, box [left, upper, right, lower] or null,
                  [size, mtime_ns] of the image or null when it was missing, category or null] per image
    unreadable   [{path, reason}] of the images left out

The file is written by prepare and may be edited or damaged by anyone since, so reading it back checks
what the readers check: paths stay inside the dataset and boxes can be cropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from antimetric.data.manifest.stamps import Stamp, file_stamp
from antimetric.data.readers.layout import box_problem, path_problem
from antimetric.data.readers.source import DataSource
from antimetric.data.records import GALLERY, QUERY, TEST, TRAIN, Box, DatasetIndex, ImageRecord
from antimetric.errors import DatasetLayoutError

# 2 added the stamps of images and index files; 3 class names and categories (a user's own data). load_or_prepare
# prepares a manifest of an older format again (nothing in it is lost: it is all derived from the dataset);
# load_manifest refuses it.
MANIFEST_FORMAT = 3
_SPLITS = {TRAIN, TEST, QUERY, GALLERY}
_SHOWN_EDITS = 3


@dataclass(frozen=True)
class UnreadableImage:
    path: str  # relative to the index root, as in ImageRecord.path
    reason: str


class OlderManifestFormat(DatasetLayoutError):
    """A manifest an earlier version wrote: load_or_prepare prepares again where load_manifest fails."""

    def __init__(self, message: str, found: int) -> None:
        super().__init__(message)
        self.found = found


@dataclass(frozen=True)
class SavedManifest:
    """A manifest as read back: every record, unreadable ones included, and the stamps it was made from."""

    name: str
    path: Path
    root: Path  # absolute
    records: list[ImageRecord]
    stamps: list[Stamp | None]  # per record
    index_files: dict[str, Stamp | None]
    unreadable: frozenset[str]  # record paths
    class_names: dict[int, str]

    def readable(self) -> DatasetIndex:
        return DatasetIndex(self.name, self.root, [r for r in self.records if r.path not in self.unreadable],
                            self.class_names, tuple(self.index_files))

    def stale_reason(self) -> str | None:
        """Why the dataset no longer matches the manifest, or None; one os.stat per file."""
        edited = [name for name, stamp in self.index_files.items() if file_stamp(self.root / name) != stamp]
        if edited:
            more = f" and {len(edited) - _SHOWN_EDITS} more" if len(edited) > _SHOWN_EDITS else ""
            return f"{', '.join(edited[:_SHOWN_EDITS])}{more} changed since the manifest was written"
        changed = sum(file_stamp(self.root / r.path) != stamp for r, stamp in zip(self.records, self.stamps))
        if changed:
            images = "image" if changed == 1 else "images"
            return f"{changed} {images} changed or missing since the manifest was written"
        return None


def manifest_json(source: DataSource, index: DatasetIndex, index_files: dict[str, Stamp | None],
                  stamps: list[Stamp | None], unreadable: list[UnreadableImage]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "dataset": source.name,
        "root": index.root.relative_to(source.dataset_dir.resolve()).as_posix(),
        "index_files": {relative: _listed(stamp) for relative, stamp in index_files.items()},
        "class_names": {str(label): name for label, name in index.class_names.items()},
        "records": [[r.path, r.label, r.split, _listed(r.box), _listed(stamp), r.category]
                    for r, stamp in zip(index.records, stamps, strict=True)],
        "unreadable": [{"path": image.path, "reason": image.reason} for image in unreadable],
    }


def read_manifest(source: DataSource) -> SavedManifest:
    """The manifest of `source`, checked; DatasetLayoutError (OlderManifestFormat) if it cannot be used."""
    path, name = source.manifest, source.name
    rerun = f"run `{source.prepare_command()}`"
    if not path.is_file():
        raise DatasetLayoutError(f"{name}: no manifest {path}; {rerun} first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(f"{name}: cannot read manifest {path} ({error}); {rerun} again") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != MANIFEST_FORMAT:
        message = (f"{name}: manifest {path} has format {found!r}, this version reads format {MANIFEST_FORMAT}; "
                   f"{rerun} again")
        if isinstance(found, int) and not isinstance(found, bool) and 0 < found < MANIFEST_FORMAT:
            raise OlderManifestFormat(message, found)
        raise DatasetLayoutError(message)
    if manifest.get("dataset") != name:
        raise DatasetLayoutError(
            f"{name}: manifest {path} is for dataset {manifest.get('dataset')!r}, not {name!r}; {rerun} again"
        )
    try:
        root = _root(manifest["root"], source.dataset_dir)
        rows = [_record(row) for row in manifest["records"]]
        index_files = {_index_file(relative, source): _stamp(stamp)
                       for relative, stamp in manifest["index_files"].items()}
        unreadable = frozenset(entry["path"] for entry in manifest["unreadable"])
        class_names = {int(label): str(name) for label, name in manifest["class_names"].items()}
    except ValueError as error:
        detail = str(error)
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        detail = repr(error)
    else:
        return SavedManifest(name=name, path=path, root=root, records=[record for record, _ in rows],
                             stamps=[stamp for _, stamp in rows], index_files=index_files, unreadable=unreadable,
                             class_names=class_names)
    raise DatasetLayoutError(f"{name}: malformed manifest {path} ({detail}); {rerun} again")


def _listed(values: tuple | None) -> list | None:
    return list(values) if values is not None else None


def _root(text: object, dataset_dir: Path) -> Path:
    if text != ".":
        _relative(text, "root")
    return (dataset_dir / str(text)).resolve()


def _relative(text: object, what: str) -> str:
    """`text` if it is a path inside the dataset, else ValueError: the manifest joins it to the root."""
    if not isinstance(text, str):
        raise ValueError(f"{what} {text!r} is not a string")
    problem = path_problem(text)
    if problem is not None:
        raise ValueError(f"{what} path {text!r} {problem}")
    return text


def _index_file(text: object, source: DataSource) -> str:
    """An index file's path: inside the dataset ('.': the root folder itself, for a folder of classes), or the
    source's own table where that lies outside the root."""
    if text == "." or (source.table is not None and text == str(source.table.resolve())):  # as the reader wrote it
        return text
    return _relative(text, "index file")


def _record(row: list) -> tuple[ImageRecord, Stamp | None]:
    path, label, split, box, stamp, category = row
    if not isinstance(label, int) or split not in _SPLITS or not isinstance(category, (str, type(None))):
        raise ValueError(f"bad record {row!r}")
    record = ImageRecord(path=_relative(path, "record"), label=label, split=split,
                         box=None if box is None else _box(box), category=category)
    return record, _stamp(stamp)


def _box(values: list) -> Box:
    left, upper, right, lower = (float(v) for v in values)
    box = (left, upper, right, lower)
    problem = box_problem(box)
    if problem is not None:
        raise ValueError(f"box {values!r} {problem}")
    return box


def _stamp(values: list | None) -> Stamp | None:
    if values is None:
        return None
    size, mtime_ns = values
    if not isinstance(size, int) or not isinstance(mtime_ns, int):
        raise ValueError(f"bad stamp {values!r}")
    return (size, mtime_ns)
