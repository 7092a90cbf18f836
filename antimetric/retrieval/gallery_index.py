"""A gallery index on disk: the embeddings of a set of images by one trained ensemble, to search.

An index is a folder:

    index.json       format, the ensemble that made it (describe()), counts, root, dataset
    embeddings.npy   (n, dim) float16, in the order of the items; read memory-mapped
    items.npz        paths (relative to the root), labels, class names, crop boxes, and the probe

antimetric.retrieval.gallery_build writes it. This module opens it for search, checking every value retrieval
uses, so that a damaged index is one line, and checks that a model can search it.

The probe is the ensemble's embedding of a fixed synthetic image. A model offered to search the
index embeds it again; a different one (other weights, same shapes) disagrees and is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from antimetric.errors import ConfigError
from antimetric.evaluation.neighbours import nearest
from antimetric.model.ensemble import cosine
from antimetric.retrieval.gallery_images import NO_LABEL, check_relative

INDEX_FORMAT = "antimetric-gallery-index"
INDEX_VERSION = 1
INFO_FILE, EMBEDDINGS_FILE, ITEMS_FILE = "index.json", "embeddings.npy", "items.npz"
INDEX_FILES = (INFO_FILE, EMBEDDINGS_FILE, ITEMS_FILE)
# The config values that shape an embedding: a model that differs in one of them cannot search the index.
EMBEDDING_KEYS = ("data_name", "crop_type", "image_size", "backbone", "share_type", "ensemble_size",
                  "meta_class_size", "with_fc", "with_random")
PROBE_AGREEMENT = 0.99  # cosine between probe embeddings; bf16 on a GPU against fp32 on a CPU stays above it
_PROBE_SEED = 20261129
_REMEDY = "pass --model with the index's own model, or build the index again with this one"


def is_index(folder: Path) -> bool:
    """A real folder (not a link) whose index.json declares our format."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        return json.loads((folder / INFO_FILE).read_text(encoding="utf-8")).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


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
        """(cosine similarities (n, k'), positions (n, k')), best first; queries (n, dim) as embed() gives them."""
        sims, positions = nearest(queries, self.embeddings, k)
        return cosine(sims, self.info["ensemble_size"]), positions


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
    _check_info(folder, info)
    try:
        embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False)
        with np.load(folder / ITEMS_FILE, allow_pickle=False) as items:
            paths = [check_relative(str(p)) for p in items["paths"]]
            labels, class_names = items["labels"].astype(np.int64), [str(c) for c in items["class_names"]]
            boxes = items["boxes"] if len(items["boxes"]) else None
            probe = items["probe"].astype(np.float32)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _damaged(folder, str(error)) from None
    n, dim = info["images"], info["embedding_dim"]
    if embeddings.shape != (n, dim) or len(paths) != n or labels.shape != (n,):
        raise _damaged(folder, f"embeddings {embeddings.shape}, {len(paths)} paths, {len(labels)} labels; "
                               f"{INFO_FILE} says {(n, dim)}")
    if probe.shape != (dim,) or (boxes is not None and boxes.shape != (n, 4)):
        raise _damaged(folder, f"a probe of shape {probe.shape} or boxes of shape "
                               f"{None if boxes is None else boxes.shape} for {n} {dim}-d embeddings")
    if n and (labels.min() < NO_LABEL or (class_names and labels.max() >= len(class_names))):
        raise _damaged(folder, f"labels from {labels.min()} to {labels.max()} for {len(class_names)} class names")
    return GalleryIndex(folder, info, embeddings, paths, labels, class_names, boxes, probe)


_INFO_TYPES = {"images": int, "embedding_dim": int, "ensemble_size": int, "root": str, "images_folder": str,
               "model": str, "ensemble": dict, "cropped": bool, "dataset": (str, type(None)),
               "tracking_uri": (str, type(None))}


def _check_info(folder: Path, info: dict) -> None:
    """The values of index.json that retrieval uses, each there and of its type."""
    wrong = [key for key, kind in _INFO_TYPES.items() if not isinstance(info.get(key, ...), kind)
             or (kind is int and isinstance(info[key], bool))]
    if not wrong and not isinstance(info["ensemble"].get("config"), dict):
        wrong = ["ensemble.config"]
    if not wrong and min(info["images"], info["embedding_dim"], info["ensemble_size"]) < 1:
        wrong = ["images, embedding_dim, ensemble_size (each at least 1)"]
    if wrong:
        raise _damaged(folder, f"{INFO_FILE} has no valid {', '.join(wrong)}")


def _damaged(folder: Path, what: str) -> ConfigError:
    return ConfigError(f"--index {folder} is damaged ({what}); build it again with `python -m antimetric index`")


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
    agreement = float(cosine(probe_embedding(ensemble) @ torch.from_numpy(index.probe), ensemble.ensemble_size))
    if not agreement >= PROBE_AGREEMENT:
        raise ConfigError(f"the model {ensemble.source} has other weights than the one that built the index "
                          f"({made_by}): their embeddings of one image agree to {agreement:.3f}; {_REMEDY}")
