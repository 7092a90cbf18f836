"""Building a gallery index (antimetric.retrieval.gallery_index describes the folder).

It is built in a hidden folder beside its target, its embeddings written chunk by chunk into a
memory-mapped .npy (memory stays bounded whatever the gallery's size), and renamed into place at
the end: an interrupted build leaves no index, and the folder a killed build leaves is removed by the
next build of that target (antimetric.base.temp_folders). A folder is replaced only when it is an index
holding nothing but the files an index writes. An image whose embedding is not finite is skipped.
"""
from __future__ import annotations

import datetime
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from antimetric.base.atomic import save_npz, write_json
from antimetric.base.temp_folders import WorkFolder, remove_stale
from antimetric.errors import ConfigError
from antimetric.retrieval.gallery_images import NO_LABEL, Failures, ImageSet, embed_files
from antimetric.retrieval.gallery_index import (
    EMBEDDINGS_FILE,
    INDEX_FILES,
    INDEX_FORMAT,
    INDEX_VERSION,
    INFO_FILE,
    ITEMS_FILE,
    is_index,
    probe_embedding,
)

_WORK_SUFFIXES = (".building", ".old")


@dataclass
class BuildSummary:
    index: Path
    images: int
    skipped: Failures
    seconds: float
    info: dict[str, Any]


def check_target(out: Path, force: bool) -> None:
    """Refuse, before any work, an --out that exists (without --force), is not an index, or cannot be written."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not is_index(out):
            raise ConfigError(f"--out {out} exists and is not an antimetric index; choose another path "
                              "(only an index is ever replaced)")
        if not force:
            raise ConfigError(f"--out {out} already holds an index; pass --force to replace it")
        _check_only_index_files(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".check"))
    except OSError as error:
        raise ConfigError(f"cannot write the index in {out.parent} ({error.strerror}); choose another --out") from None


def _check_only_index_files(out: Path) -> None:
    others = sorted(entry.name for entry in out.iterdir() if entry.name not in INDEX_FILES)
    if others:
        raise ConfigError(f"--out {out} holds files an index does not write ({', '.join(others[:3])}); --force "
                          "replaces only an index's own files: move those elsewhere or choose another --out")


def build_index(ensemble, images: ImageSet, out: Path, *, model_source: str, tracking_uri: str | None = None,
                force: bool = False, batch_size: int = 64, workers: int = 0, progress: bool = False) -> BuildSummary:
    """Embed `images` with `ensemble` (a TrainedEnsemble) into the index folder `out`.

    model_source, tracking_uri: how to load the ensemble again (an absolute path or an MLflow source)."""
    out = Path(out)
    check_target(out, force)
    crop = ensemble.config.data.crop_type == "cropped" and images.boxes is not None
    boxes = images.boxes if crop else None
    started = time.perf_counter()
    remove_stale(out, _WORK_SUFFIXES)
    work = WorkFolder(out, ".building")
    building = work.path
    try:
        failures = Failures()
        kept = _write_embeddings(building / EMBEDDINGS_FILE, ensemble, images, boxes, failures,
                                 batch_size=batch_size, workers=workers, progress=progress)
        if not kept:
            raise ConfigError(f"none of the {len(images.paths)} images under {images.root} could be read "
                              f"(first: {failures.examples[0][0]}: {failures.examples[0][1]})")
        save_npz(building / ITEMS_FILE, paths=np.array([images.paths[i] for i in kept], dtype=str),
                 labels=images.labels[kept], class_names=np.array(images.class_names, dtype=str),
                 boxes=boxes[kept] if boxes is not None else np.zeros((0, 4), np.float32),
                 probe=probe_embedding(ensemble).numpy())
        info = _info(ensemble, images, len(kept), failures, crop)
        info.update(model=model_source, tracking_uri=tracking_uri)
        write_json(building / INFO_FILE, info)
        os.chmod(building, 0o755)  # mkdtemp makes it private
        work.finish()
        _move_into_place(building, out)
    except BaseException:
        work.remove()
        raise
    return BuildSummary(out, len(kept), failures, time.perf_counter() - started, info)


def _write_embeddings(path: Path, ensemble, images: ImageSet, boxes: np.ndarray | None, failures: Failures, *,
                      batch_size: int, workers: int, progress: bool) -> list[int]:
    """Write the embeddings batch by batch into a float16 memmap; the positions of the images kept."""
    n, dim = len(images.paths), ensemble.embedding_dim
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    kept: list[int] = []
    files = [images.root / p for p in images.paths]
    for batch in embed_files(ensemble, files, boxes, failures, batch_size=batch_size, workers=workers,
                             progress=progress, desc="index"):
        finite = torch.isfinite(batch.embeddings).all(dim=1).tolist()
        for position, ok in zip(batch.positions, finite):
            if not ok:
                failures.add(str(files[position]), "the model's embedding of it is not finite (NaN or inf)")
        rows = batch.embeddings[torch.tensor(finite, dtype=torch.bool)].numpy().astype(np.float16)
        stored[len(kept):len(kept) + len(rows)] = rows
        kept.extend(position for position, ok in zip(batch.positions, finite) if ok)
    stored.flush()
    del stored
    if 0 < len(kept) < n:  # unreadable images left rows unused at the end: copy the used ones into a smaller file
        _truncate_rows(path, len(kept))
    return kept


def _truncate_rows(path: Path, rows: int, chunk_rows: int = 8192) -> None:
    full = np.load(path, mmap_mode="r")
    smaller_path = path.with_name(path.name + ".part")
    smaller = np.lib.format.open_memmap(smaller_path, mode="w+", dtype=full.dtype, shape=(rows, full.shape[1]))
    for start in range(0, rows, chunk_rows):
        smaller[start:start + chunk_rows] = full[start:min(rows, start + chunk_rows)]
    smaller.flush()
    del smaller, full
    os.replace(smaller_path, path)


def _info(ensemble, images: ImageSet, count: int, failures: Failures, crop: bool) -> dict:
    return {
        "format": INDEX_FORMAT, "version": INDEX_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ensemble": ensemble.describe(),
        "embedding_dim": ensemble.embedding_dim, "ensemble_size": ensemble.ensemble_size, "dtype": "float16",
        "images": count, "skipped": failures.count, "skipped_examples": [list(e) for e in failures.examples],
        "root": str(images.root), "images_folder": str(images.folder), "dataset": images.dataset,
        "split": images.split, "cropped": crop,
        "labelled": images.labelled, "classes": len(np.unique(images.labels[images.labels != NO_LABEL])),
    }


def _move_into_place(building: Path, out: Path) -> None:
    """Rename the finished folder to `out`; a previous index there is moved aside first, then removed."""
    if not out.exists():
        os.rename(building, out)
        return
    _check_only_index_files(out)  # again: a file may have been put there while the index was built
    old = WorkFolder(out, ".old")
    os.rename(out, old.path / out.name)
    os.rename(building, out)
    old.remove()
