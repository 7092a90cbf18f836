"""Retrieve among a gallery index: queries, their labels when known, and each one's nearest gallery images.

A query's label is known when the query is itself in the index (the same file), is an image of the
index's dataset (looked up in its manifest), or sits in a subfolder named like one of the index's
classes (ImageFolder layout; for a dataset, the class id). Then each neighbour is marked correct
or not; otherwise correctness is unknown (None). A query or gallery image whose embedding is not finite
(a damaged index row, a model that gives NaN) is never a result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from antimetric.data.manifest.prepare import load_manifest
from antimetric.data.readers.source import benchmark
from antimetric.data.records import ImageRecord
from antimetric.errors import AntimetricError, ConfigError
from antimetric.retrieval.gallery_images import NO_LABEL, Failures, embed_files, folder_images
from antimetric.retrieval.gallery_index import GalleryIndex

Box = tuple[float, float, float, float]


@dataclass
class Query:
    file: Path  # resolved
    label: int = NO_LABEL  # in the index's labels
    position: int | None = None  # the query's own position in the index, when it is there
    box: Box | None = None  # crop box, for an index of cropped dataset images


@dataclass
class Neighbour:
    rank: int  # from 1
    position: int  # in the index
    similarity: float  # cosine
    file: Path
    label: str | None
    correct: bool | None  # None when either label is unknown
    box: Box | None = None


@dataclass
class Retrieval:
    query: Query
    label: str | None
    neighbours: list[Neighbour]

    def to_json(self) -> dict:
        return {"query": str(self.query.file), "label": self.label, "index_position": self.query.position,
                "neighbours": [{"rank": n.rank, "similarity": n.similarity, "path": str(n.file), "label": n.label,
                                "correct": n.correct, "is_query": n.position == self.query.position,
                                "index_position": n.position} for n in self.neighbours]}


def find_queries(path: Path, index: GalleryIndex) -> list[Query]:
    """The query images at PATH (an image file, or a folder searched as `index --images` searches one)."""
    path = Path(path).expanduser()
    if path.is_file():
        files, names = [path.resolve()], [None]
    elif path.is_dir():
        found = folder_images(path)
        files = [found.root / p for p in found.paths]
        names = [found.class_names[label] if label != NO_LABEL else None for label in found.labels]
    elif path.exists():
        raise ConfigError(f"--query {path} is not a regular file (a pipe, socket or device); give an image or a folder")
    else:
        raise ConfigError(f"--query {path}: no such image or folder")
    records = _dataset_records(index)
    return [_query(file, name, index, records) for file, name in zip(files, names)]


def _query(file: Path, folder_class: str | None, index: GalleryIndex, records: dict[str, ImageRecord]) -> Query:
    position = index.position_of(file)
    if position is not None:
        return Query(file, int(index.labels[position]), position, _box(index, position))
    try:
        record = records.get(file.relative_to(index.root).as_posix())
    except ValueError:
        record = None
    if record is not None:
        return Query(file, record.label, None, record.box if index.info["cropped"] else None)
    label = index.label_of_name(folder_class) if folder_class is not None else None
    return Query(file, NO_LABEL if label is None else label)


def _dataset_records(index: GalleryIndex) -> dict[str, ImageRecord]:
    """A dataset index's whole dataset by path (every split), so that any of its images has its label."""
    name = index.info.get("dataset")
    if name is None:
        return {}
    try:
        dataset = load_manifest(benchmark(name, Path(index.info["images_folder"]).parent))
    except (AntimetricError, OSError):
        return {}
    return {record.path: record for record in dataset.records}


def retrieve(ensemble, index: GalleryIndex, queries: list[Query], k: int, failures: Failures, *,
             batch_size: int = 64, workers: int = 0, progress: bool = False) -> Iterator[Retrieval]:
    """Each readable query's top-k in the index, in query order (`ensemble`: a TrainedEnsemble that can search
    the index, see gallery_index.check_model); unreadable queries are skipped and added to `failures`."""
    boxes = None
    if any(query.box is not None for query in queries):
        boxes = np.array([query.box or (np.nan,) * 4 for query in queries], dtype=np.float32)
    for batch in embed_files(ensemble, [query.file for query in queries], boxes, failures, batch_size=batch_size,
                             workers=workers, progress=progress, desc="retrieve"):
        sims, positions = index.search(batch.embeddings, k)
        finite = torch.isfinite(batch.embeddings).all(dim=1).tolist()
        for row, i in enumerate(batch.positions):
            if not finite[row]:
                failures.add(str(queries[i].file), "the model's embedding of it is not finite (NaN or inf)")
                continue
            yield _retrieval(queries[i], index, sims[row].tolist(), positions[row].tolist())


def _retrieval(query: Query, index: GalleryIndex, sims: list[float], positions: list[int]) -> Retrieval:
    neighbours = []
    for rank, (similarity, position) in enumerate(zip(sims, positions), start=1):
        if not math.isfinite(similarity):  # a damaged gallery row ranks last; it is no neighbour
            break
        label = int(index.labels[position])
        correct = None if NO_LABEL in (label, query.label) else label == query.label
        neighbours.append(Neighbour(rank, position, similarity, index.file(position), index.label_name(label),
                                    correct, _box(index, position)))
    return Retrieval(query, index.label_name(query.label), neighbours)


def _box(index: GalleryIndex, position: int) -> Box | None:
    if index.boxes is None or np.isnan(index.boxes[position]).any():
        return None
    return tuple(float(v) for v in index.boxes[position])
