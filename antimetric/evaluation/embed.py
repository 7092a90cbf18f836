"""Embedding images with an ensemble and scoring retrieval on classes it never trained on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from antimetric.evaluation.metrics import retrieval_metrics
from antimetric.model.device_plan import to_device_batch
from antimetric.model.ensemble import EnsembleNet

__all__ = ["Embeddings", "embed", "embeddings_arrays", "score", "score_per_category"]


@dataclass
class Embeddings:
    features: torch.Tensor  # (n, ensemble_size * d), float16 on the CPU
    labels: torch.Tensor  # (n,)
    paths: list[str]


@torch.no_grad()
def embed(model: EnsembleNet, loader: DataLoader, device: torch.device, *, progress: bool = False,
          desc: str = "embed") -> Embeddings:
    """Embeddings of every image the loader yields, in its order (kept in float16: each branch's
    part is unit-length, so half precision loses nothing retrieval can see)."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = to_device_batch(images, device, model.plan.channels_last)
        features.append(model.embed(images).half().cpu())
        labels.append(torch.as_tensor(targets))
    model.train(was_training)
    paths = [r.path for r in loader.dataset.records]
    return Embeddings(torch.cat(features), torch.cat(labels), paths)


def score(query: Embeddings, ks: tuple[int, ...], gallery: Embeddings | None = None, *,
          device: torch.device | None = None, chunk_size: int = 4096) -> dict[str, float]:
    """Recall@K, MAP@R and R-precision; leave-one-out within `query` unless a gallery is given."""
    device = device or torch.device("cpu")
    return retrieval_metrics(
        query.features.to(device), query.labels.to(device), ks,
        gallery.features.to(device) if gallery is not None else None,
        gallery.labels.to(device) if gallery is not None else None,
        chunk_size=chunk_size,
    )


def score_per_category(query: Embeddings, query_categories: list[str | None], ks: tuple[int, ...],
                       gallery: Embeddings | None = None, gallery_categories: list[str | None] | None = None, *,
                       device: torch.device | None = None, chunk_size: int = 4096) -> dict[str, dict[str, float]]:
    """score() within each category (a table's `category` column), queries and gallery both restricted to it,
    as open-metric-learning reports them; images without a category are in none."""
    out = {}
    for category in sorted({c for c in query_categories if c is not None}):
        rows = [i for i, c in enumerate(query_categories) if c == category]
        part = _subset(query, rows)
        other = None
        if gallery is not None:
            other = _subset(gallery, [i for i, c in enumerate(gallery_categories or []) if c == category])
        if len(rows) > 1 or (other is not None and other.paths):
            out[category] = score(part, ks, other, device=device, chunk_size=chunk_size)
    return out


def _subset(embeddings: Embeddings, rows: list[int]) -> Embeddings:
    index = torch.as_tensor(rows, dtype=torch.long)
    return Embeddings(embeddings.features[index], embeddings.labels[index], [embeddings.paths[i] for i in rows])


def embeddings_arrays(prefix: str, embeddings: Embeddings) -> dict[str, np.ndarray]:
    """The arrays of a feature database (.npz): paths, labels and features under `prefix`."""
    return {
        f"{prefix}_paths": np.asarray(embeddings.paths, dtype=np.str_),
        f"{prefix}_labels": embeddings.labels.numpy(),
        f"{prefix}_features": embeddings.features.numpy(),
    }
