"""The prepared form of a dataset: its index checked image by image and saved as JSON beside the data.

`prepare` reads the official layout once, decodes every image to find the unreadable ones, and writes
MANIFEST_NAME into the dataset folder; training and evaluation then load that manifest instead of
parsing the layout and meeting a broken JPEG in the middle of an epoch.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from antimetric.atomic import write_json
from antimetric.data.cache import CacheForm, finish_cache, resized_for_cache, save_cached, start_cache
from antimetric.data.images import open_rgb
from antimetric.data.layout import read_dataset
from antimetric.data.records import GALLERY, QUERY, TEST, TRAIN, DatasetIndex, ImageRecord
from antimetric.errors import DatasetLayoutError

MANIFEST_NAME = "antimetric-manifest.json"
MANIFEST_FORMAT = 1
_SPLITS = {TRAIN, TEST, QUERY, GALLERY}
_REPORTED_UNREADABLE = 20
_REASON_CHARS = 200
# PIL releases the GIL while decoding, so threads check images in parallel without extra processes.
_DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class UnreadableImage:
    path: str  # relative to the index root, as in ImageRecord.path
    reason: str


@dataclass
class PrepareReport:
    dataset: str
    manifest: Path
    splits: dict[str, dict[str, int]]  # per split: images and classes, unreadable images excluded
    unreadable: list[UnreadableImage] = field(default_factory=list)
    cache: Path | None = None  # the resized-image cache written, if one was asked for

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "manifest": str(self.manifest),
            "cache": str(self.cache) if self.cache is not None else None,
            "splits": self.splits,
            "unreadable": len(self.unreadable),
            "unreadable_files": [image.path for image in self.unreadable[:_REPORTED_UNREADABLE]],
        }


def manifest_path(name: str, data_path: Path) -> Path:
    return Path(data_path) / name / MANIFEST_NAME


def prepare(name: str, data_path: Path, *, progress: bool = True, cache: CacheForm | None = None) -> PrepareReport:
    """Read dataset `name` from data_path/name, decode every image once and write its manifest there.

    Missing or undecodable images do not stop the run: they are listed as unreadable in the manifest
    and the report, and load_manifest leaves them out. With `cache`, each readable image is also
    written resized into that cache folder (antimetric.data.cache), in the same pass.
    """
    dataset_dir = Path(data_path) / name
    index = read_dataset(name, dataset_dir)
    if cache is not None:
        try:
            start_cache(cache.folder(dataset_dir))
        except OSError as error:
            raise DatasetLayoutError(f"{name}: cannot write the image cache in {cache.folder(dataset_dir)} "
                                     f"({error})") from None
    unreadable = _find_unreadable(index, cache, dataset_dir, progress=progress)
    path = manifest_path(name, data_path)
    try:
        write_json(path, _manifest_json(name, dataset_dir, index, unreadable))
    except OSError as error:
        raise DatasetLayoutError(f"{name}: cannot write manifest {path} ({error})") from None
    skipped = {image.path for image in unreadable}
    readable = DatasetIndex(index.name, index.root, [r for r in index.records if r.path not in skipped])
    cache_folder = cache.folder(dataset_dir) if cache is not None else None
    if cache is not None:
        try:
            finish_cache(dataset_dir, name, cache, index.root, readable.records)
        except OSError as error:
            raise DatasetLayoutError(f"{name}: cannot write the image cache index in {cache_folder} ({error})") from None
    return PrepareReport(dataset=name, manifest=path, splits=readable.summary(), unreadable=unreadable,
                         cache=cache_folder)


def load_manifest(name: str, data_path: Path) -> DatasetIndex:
    """The DatasetIndex saved by prepare, without its unreadable images, with an absolute root."""
    path = manifest_path(name, data_path)
    rerun = f"run `python -m antimetric prepare --data-path {data_path} --data-name {name}`"
    if not path.is_file():
        raise DatasetLayoutError(f"{name}: no manifest {path}; {rerun} first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(f"{name}: cannot read manifest {path} ({error}); {rerun} again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DatasetLayoutError(
            f"{name}: manifest {path} has format {found!r}, this version reads format {MANIFEST_FORMAT}; "
            f"{rerun} again"
        )
    if manifest.get("dataset") != name:
        raise DatasetLayoutError(
            f"{name}: manifest {path} is for dataset {manifest.get('dataset')!r}, not {name!r}; {rerun} again"
        )
    try:
        root = (path.parent / manifest["root"]).resolve()
        skipped = {entry["path"] for entry in manifest["unreadable"]}
        records = [_record(row) for row in manifest["records"] if row[0] not in skipped]
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise DatasetLayoutError(f"{name}: malformed manifest {path} ({error!r}); {rerun} again") from None
    return DatasetIndex(name=name, root=root, records=records)


def load_or_prepare(name: str, data_path: Path, *, progress: bool = True) -> DatasetIndex:
    """The saved manifest of dataset `name`, preparing it first when there is none."""
    if not manifest_path(name, data_path).is_file():
        prepare(name, data_path, progress=progress)
    return load_manifest(name, data_path)


def _find_unreadable(index: DatasetIndex, cache: CacheForm | None, dataset_dir: Path, *,
                     progress: bool) -> list[UnreadableImage]:
    with (
        ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool,
        tqdm(
            total=len(index.records),
            desc=f"prepare {index.name}",
            unit="img",
            file=sys.stderr,
            disable=not progress,
        ) as bar,
    ):
        reasons = []
        def check(record: ImageRecord) -> str | None:
            return _check_image(index.name, index.root, record, cache, dataset_dir)

        for reason in pool.map(check, index.records):
            reasons.append(reason)
            bar.update()
    return [
        UnreadableImage(path=record.path, reason=reason)
        for record, reason in zip(index.records, reasons, strict=True)
        if reason is not None
    ]


def _check_image(name: str, root: Path, record: ImageRecord, cache: CacheForm | None,
                 dataset_dir: Path) -> str | None:
    """None when the file decodes (and, with a cache, its resized copy is written), else a short reason."""
    try:
        image = open_rgb(root / record.path)
    except FileNotFoundError:
        return "missing file"
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError... on damaged files
        text = " ".join(str(error).split()) or "no details"
        return f"{type(error).__name__}: {text}"[:_REASON_CHARS]
    with image:
        if cache is not None:
            try:
                resized = resized_for_cache(image, record, cache)
            except ValueError as error:
                raise DatasetLayoutError(f"{name}: cannot cache {record.path}: {error}") from None
            try:
                save_cached(resized, record, cache.folder(dataset_dir))
            except OSError as error:
                raise DatasetLayoutError(
                    f"{name}: cannot write the cached copy of {record.path} in {cache.folder(dataset_dir)} ({error})"
                ) from None
    return None


def _manifest_json(name: str, dataset_dir: Path, index: DatasetIndex, unreadable: list[UnreadableImage]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "dataset": name,
        "root": index.root.relative_to(dataset_dir).as_posix(),
        "records": [[r.path, r.label, r.split, list(r.box) if r.box is not None else None] for r in index.records],
        "unreadable": [{"path": image.path, "reason": image.reason} for image in unreadable],
    }


def _record(row: list) -> ImageRecord:
    path, label, split, box = row
    if not isinstance(path, str) or not isinstance(label, int) or split not in _SPLITS:
        raise ValueError(f"bad record {row!r}")
    return ImageRecord(path=path, label=label, split=split, box=None if box is None else _box(box))


def _box(values: list) -> tuple[float, float, float, float]:
    left, upper, right, lower = (float(v) for v in values)
    return (left, upper, right, lower)
