"""The prepared form of a dataset: its index checked image by image and saved as JSON beside the data.

`prepare` reads the official layout once, decodes every image to find the unreadable ones, and writes
MANIFEST_NAME into the dataset folder; training and evaluation then load that manifest instead of
parsing the layout and meeting a broken JPEG in the middle of an epoch.

The manifest keeps the stamp (size, modification time) of every image and index file it was made from.
load_or_prepare compares them (one os.stat per file) and prepares again when an image was deleted or
replaced or an index file edited since, so that a changed dataset is neither trained on blindly nor
crashes an epoch. Preparing holds the dataset's lock (antimetric.data.manifest.locking): processes starting at
once prepare it once.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from antimetric.base.atomic import write_json
from antimetric.base.cpus import available_cpus
from antimetric.data.cache import CacheForm, finish_cache, resized_for_cache, save_cached, start_cache
from antimetric.data.images import open_rgb
from antimetric.data.manifest.locking import dataset_lock
from antimetric.data.manifest.saved import (
    MANIFEST_FORMAT,
    OlderManifestFormat,
    SavedManifest,
    UnreadableImage,
    manifest_json,
    read_manifest,
)
from antimetric.data.manifest.stamps import Stamp, file_stamp
from antimetric.data.readers.source import DataSource
from antimetric.data.records import DatasetIndex, ImageRecord
from antimetric.errors import DatasetLayoutError

NO_MANIFEST = "no manifest"
_REPORTED_UNREADABLE = 20
_REASON_CHARS = 200
# PIL releases the GIL while decoding, so threads check images in parallel without extra processes.
_DECODE_THREADS = min(8, available_cpus())


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


def prepare(source: DataSource, *, progress: bool = True, cache: CacheForm | None = None) -> PrepareReport:
    """Read the dataset of `source`, decode every image once and write its manifest in its folder.

    Missing or undecodable images do not stop the run: they are listed as unreadable in the manifest
    and the report, and load_manifest leaves them out. With `cache`, each readable image is also
    written resized into that cache folder (antimetric.data.cache), in the same pass.
    """
    index = source.read()  # a missing layout or bad table fails before a lock file is made
    with dataset_lock(*source.lock_place()):
        return _prepare(source, index, progress=progress, cache=cache)


def load_manifest(source: DataSource) -> DatasetIndex:
    """The DatasetIndex saved by prepare, without its unreadable images, with an absolute root (and a folder's
    test classes drawn)."""
    return source.with_splits(read_manifest(source).readable())


def load_or_prepare(source: DataSource, *, progress: bool = True) -> DatasetIndex:
    """The saved manifest of `source`, preparing it first when there is none or it is out of date.

    Out of date: an older manifest format, or an image or index file changed or gone since it was
    written (a user's folder: an image added, removed or moved between class folders); one line on stderr
    says which. Unreadable images the manifest leaves out are counted in one line on stderr, so that a run
    on part of a dataset does not pass unnoticed.
    """
    name = source.name
    saved, reason = _saved_or_why_not(source)
    if reason is not None:
        index = source.read()
        with dataset_lock(*source.lock_place()):
            saved, reason = _saved_or_why_not(source)  # another process may have prepared it meanwhile
            if reason is not None:
                if reason != NO_MANIFEST:
                    print(f"{name}: {reason}; preparing again", file=sys.stderr)
                _prepare(source, index, progress=progress, cache=None)
                saved = read_manifest(source)
    if saved.unreadable:
        print(f"{name}: {len(saved.unreadable)} of {len(saved.records)} images are unreadable and left out "
              f"(see {saved.path})", file=sys.stderr)
    return source.with_splits(saved.readable())


def why_out_of_date(source: DataSource) -> str | None:
    """None when the manifest of `source` matches its data, else why not (a run resumed on changed data
    refuses with it)."""
    return _saved_or_why_not(source)[1]


def _prepare(source: DataSource, index: DatasetIndex, *, progress: bool, cache: CacheForm | None) -> PrepareReport:
    """prepare, for a caller that holds the dataset's lock."""
    name, dataset_dir = source.name, source.work_dir  # the cache is written in its work folder
    if cache is not None:
        try:
            start_cache(cache.folder(dataset_dir))
        except OSError as error:
            raise DatasetLayoutError(f"{name}: cannot write the image cache in {cache.folder(dataset_dir)} "
                                     f"({error})") from None
    sources = {relative: file_stamp(index.root / relative) for relative in index.sources}
    stamps, unreadable = _check_images(index, cache, dataset_dir, progress=progress)
    path = source.manifest
    try:
        write_json(path, manifest_json(source, index, sources, stamps, unreadable))
    except OSError as error:
        raise DatasetLayoutError(f"{name}: cannot write manifest {path} ({error})") from None
    skipped = {image.path for image in unreadable}
    readable = DatasetIndex(index.name, index.root, [r for r in index.records if r.path not in skipped],
                            index.class_names, index.sources)
    cache_folder = cache.folder(dataset_dir) if cache is not None else None
    if cache is not None:
        try:
            finish_cache(dataset_dir, name, cache, index.root, readable.records)
        except OSError as error:
            raise DatasetLayoutError(f"{name}: cannot write the image cache index in {cache_folder} ({error})") from None
    return PrepareReport(dataset=name, manifest=path, splits=source.with_splits(readable).summary(), unreadable=unreadable,
                         cache=cache_folder)


def _check_images(index: DatasetIndex, cache: CacheForm | None, dataset_dir: Path, *,
                  progress: bool) -> tuple[list[Stamp | None], list[UnreadableImage]]:
    """Each image's stamp (taken before it is decoded, so that a later change shows) and the unreadable ones."""
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
        results = []
        def check(record: ImageRecord) -> tuple[Stamp | None, str | None]:
            stamp = file_stamp(index.root / record.path)
            return stamp, _check_image(index.name, index.root, record, cache, dataset_dir)

        for result in pool.map(check, index.records):
            results.append(result)
            bar.update()
    unreadable = [
        UnreadableImage(path=record.path, reason=reason)
        for record, (_, reason) in zip(index.records, results, strict=True)
        if reason is not None
    ]
    return [stamp for stamp, _ in results], unreadable


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
            except (OSError, ValueError) as error:  # ValueError: a target outside the cache folder
                raise DatasetLayoutError(
                    f"{name}: cannot write the cached copy of {record.path} in {cache.folder(dataset_dir)} ({error})"
                ) from None
    return None


def _saved_or_why_not(source: DataSource) -> tuple[SavedManifest | None, str | None]:
    """The manifest when it is up to date, else why it must be prepared (NO_MANIFEST when there is none)."""
    if not source.manifest.is_file():
        return None, NO_MANIFEST
    try:
        saved = read_manifest(source)
    except OlderManifestFormat as older:
        return None, (f"manifest {source.manifest} has format {older.found}, "
                      f"this version writes format {MANIFEST_FORMAT}")
    reason = saved.stale_reason()
    return (saved, None) if reason is None else (None, reason)
