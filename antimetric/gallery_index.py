"""A gallery index on disk: the embeddings of a set of images by one trained ensemble, to search.

An index is a folder:

    index.json       format, the ensemble that made it (describe()), counts, root, dataset
    embeddings.npy   (n, dim) float16, in the order of the items; read memory-mapped
    items.npz        paths (relative to the root), labels, class names, crop boxes, and the probe

It is built in a temporary folder beside its target, its embeddings written chunk by chunk into a
memory-mapped .npy (memory stays bounded whatever the gallery's size), and renamed into place at
the end: an interrupted build leaves no index. A folder is replaced only when it is an index.

The probe is the ensemble's embedding of a fixed synthetic image. A model offered to search the
index embeds it again; a different one (other weights, same shapes) disagrees and is refused.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from antimetric.atomic import save_npz, write_json
from antimetric.errors import ConfigError
from antimetric.gallery_images import NO_LABEL, Failures, ImageSet, check_relative, embed_files
from antimetric.neighbours import nearest

INDEX_FORMAT = "antimetric-gallery-index"
INDEX_VERSION = 1
INFO_FILE, EMBEDDINGS_FILE, ITEMS_FILE = "index.json", "embeddings.npy", "items.npz"
# The config values that shape an embedding: a model that differs in one of them cannot search the index.
EMBEDDING_KEYS = ("data_name", "crop_type", "image_size", "backbone", "share_type", "ensemble_size",
                  "meta_class_size", "with_fc", "with_random")
PROBE_AGREEMENT = 0.99  # cosine between probe embeddings; bf16 on a GPU against fp32 on a CPU stays above it
_PROBE_SEED = 20261129
_REMEDY = "pass --model with the index's own model, or build the index again with this one"


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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".check"))
    except OSError as error:
        raise ConfigError(f"cannot write the index in {out.parent} ({error.strerror}); choose another --out") from None


def is_index(folder: Path) -> bool:
    """A real folder (not a link) whose index.json declares our format."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        return json.loads((folder / INFO_FILE).read_text(encoding="utf-8")).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def build_index(ensemble, images: ImageSet, out: Path, *, model_source: str, tracking_uri: str | None = None,
                force: bool = False, batch_size: int = 64, workers: int = 0, progress: bool = False) -> BuildSummary:
    """Embed `images` with `ensemble` (a TrainedEnsemble) into the index folder `out`.

    model_source, tracking_uri: how to load the ensemble again (an absolute path or an MLflow source)."""
    out = Path(out)
    check_target(out, force)
    crop = ensemble.config.data.crop_type == "cropped" and images.boxes is not None
    boxes = images.boxes if crop else None
    started = time.perf_counter()
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".building"))
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
        _move_into_place(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
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
        stored[len(kept):len(kept) + len(batch.positions)] = batch.embeddings.numpy().astype(np.float16)
        kept.extend(batch.positions)
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
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old / out.name)
    os.rename(building, out)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def probe_embedding(ensemble) -> torch.Tensor:
    """The ensemble's embedding (dim,) of a fixed noise image: a fingerprint of its weights."""
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    size = ensemble.config.data.image_size
    image = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
    return ensemble.embed_tensor(ensemble.preprocess(image)[None])[0]


@dataclass
class GalleryIndex:
    """An index opened for search; the embeddings stay on disk, memory-mapped."""

    folder: Path
    info: dict[str, Any]
    embeddings: np.ndarray  # (n, dim) float16 memmap
    paths: list[str]
    labels: np.ndarray  # (n,) int64, NO_LABEL where unknown
    class_names: list[str]
    boxes: np.ndarray | None  # (n, 4), when the index was built from cropped images
    probe: np.ndarray  # (dim,) float32

    @property
    def root(self) -> Path:
        return Path(self.info["root"])

    def file(self, position: int) -> Path:
        return self.root / self.paths[position]

    def label_name(self, label: int) -> str | None:
        if label == NO_LABEL:
            return None
        return self.class_names[label] if self.class_names else str(label)

    def label_of_name(self, name: str) -> int | None:
        """The label whose name is `name` (a folder's class name, or a dataset's class id as text)."""
        if self.class_names:
            return self.class_names.index(name) if name in self.class_names else None
        return int(name) if name.isdigit() and int(name) in self._label_set else None

    def position_of(self, file: Path) -> int | None:
        """The position of a file in the index (compared as resolved paths), or None."""
        try:
            relative = Path(file).resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return None
        return self._positions.get(relative)

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {path: i for i, path in enumerate(self.paths)}

    @cached_property
    def _label_set(self) -> set[int]:
        return set(self.labels.tolist())

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosine similarities (n, k'), positions (n, k')), best first; queries (n, dim) as embed() gives them.
        An embedding concatenates ensemble_size unit vectors, so cosine = dot / ensemble_size."""
        sims, positions = nearest(queries, self.embeddings, k)
        return sims / self.info["ensemble_size"], positions


def read_index(folder: Path) -> GalleryIndex:
    """Open the index in `folder`; one-line ConfigError when it is missing, not an index or damaged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--index {folder}: no such folder; build one with `python -m antimetric index`")
    if not is_index(folder):
        raise ConfigError(f"--index {folder} is not an antimetric index (no {INFO_FILE} of format {INDEX_FORMAT})")
    info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    if info.get("version") != INDEX_VERSION:
        raise ConfigError(f"--index {folder} has version {info.get('version')}, this antimetric reads version "
                          f"{INDEX_VERSION}; build it again with `python -m antimetric index`")
    try:
        embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False)
        with np.load(folder / ITEMS_FILE, allow_pickle=False) as items:
            paths = [check_relative(str(p)) for p in items["paths"]]
            labels, class_names = items["labels"].astype(np.int64), [str(c) for c in items["class_names"]]
            boxes = items["boxes"] if len(items["boxes"]) else None
            probe = items["probe"].astype(np.float32)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"--index {folder} is damaged ({error}); build it again") from None
    expected = (info["images"], info["embedding_dim"])
    if embeddings.shape != expected or len(paths) != info["images"] or len(labels) != info["images"]:
        raise ConfigError(f"--index {folder} is damaged (embeddings {embeddings.shape}, {len(paths)} paths; "
                          f"index.json says {expected}); build it again")
    return GalleryIndex(folder, info, embeddings, paths, labels, class_names, boxes, probe)


def check_model(index: GalleryIndex, ensemble) -> None:
    """Refuse a model whose embeddings cannot be compared with the index's (shape, config or weights)."""
    made_by = index.info["model"]
    if ensemble.embedding_dim != index.info["embedding_dim"]:
        raise ConfigError(f"the model {ensemble.source} makes {ensemble.embedding_dim}-d embeddings, the index holds "
                          f"{index.info['embedding_dim']}-d ones (made by {made_by}); {_REMEDY}")
    ours, theirs = ensemble.config.to_flat(), index.info["ensemble"]["config"]
    differing = [f"{key} {ours.get(key)!r} (index: {theirs.get(key)!r})" for key in EMBEDDING_KEYS
                 if ours.get(key) != theirs.get(key)]
    if differing:
        raise ConfigError(f"the model {ensemble.source} differs from the model of the index ({made_by}) in "
                          f"{', '.join(differing)}; {_REMEDY}")
    agreement = float(probe_embedding(ensemble) @ torch.from_numpy(index.probe)) / ensemble.ensemble_size
    if not agreement >= PROBE_AGREEMENT:
        raise ConfigError(f"the model {ensemble.source} has other weights than the one that built the index "
                          f"({made_by}): their embeddings of one image agree to {agreement:.3f}; {_REMEDY}")
