"""Exact nearest-neighbour retrieval metrics, computed in chunks of query rows.

Memory is bounded by ``chunk_size x gallery_size`` (never N x N): the query set is
walked in row chunks, and each chunk's similarities to the whole gallery are
computed once and reduced to per-query counts before the next chunk. Peak working
memory is roughly 12 bytes x chunk_size x gallery_size, plus a float32 copy of a
half-precision gallery and O(n_query) per-query results.

Similarity is the plain dot product, computed in float32 (float16/bfloat16 inputs
are upcast; nothing is normalised here -- the caller L2-normalises). All work stays
on the features' device (CPU or CUDA); results are Python floats.

Modes:

* ``gallery=None`` -- leave-one-out on the query set (CUB-200, Cars-196, SOP): each
  query is searched against every *other* item. The query itself is excluded by
  index, not by similarity value, so exact duplicates of it still count.
* ``gallery`` given -- query->gallery (In-shop): nothing is excluded.

Recall@K: a query is a hit if a same-label item is among its K nearest. Ties are
pessimistic and independent of order: the rank of the first positive is the number
of negatives whose similarity is >= the best positive's, and the query is a hit iff
that rank < K. A query with no positive (no other item of its class, or none in the
gallery) cannot be scored: it is left out of every metric's denominator, and a
LeftOutQueries warning says how many were (the test split refuses a set where none is left).

MAP@R and R-precision (Musgrave et al., "A Metric Learning Reality Check", 2020):
with R the number of relevant gallery items of a query,
``MAP@R = (1/R) * sum_{i=1..R} P(i) * rel(i)`` where P(i) is the precision at i of
the ranked list, and ``R-precision = (#relevant in the top R) / R``. The ranking is
``torch.topk``'s, so the order among items of *equal* similarity is whatever topk
returns -- unlike Recall@K, these two are not tie-pessimistic.

Non-finite embeddings (a diverged network gives NaN) are misses, never hits: a query with a
NaN or infinite component scores 0 in every metric (and still counts in the denominators), and
a gallery item with one ranks below every finite item and never counts as a retrieved positive
(it still counts in its class's R). Without this, NaN similarities would make every query a
hit (no negative compares >= NaN) and a diverged run would score Recall@K = 1.

Whether two items tie is decided on float32 dot products: duplicated vectors give
identical similarities, but vectors that are equal only in exact arithmetic may not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from antimetric.errors import AntimetricWarning

MAP_AT_R_KEY = "map_at_r"
R_PRECISION_KEY = "r_precision"

_Labels = torch.Tensor | Sequence[int] | np.ndarray


class LeftOutQueries(AntimetricWarning):
    """Queries without a positive were left out of the metrics."""


def recall_key(k: int) -> str:
    """The metric name of Recall@k in the dict of :func:`retrieval_metrics`."""
    return f"recall_at_{k}"


@dataclass(frozen=True)
class _Inputs:
    query: torch.Tensor  # (n_query, dim), original dtype
    query_labels: torch.Tensor  # (n_query,) int64
    gallery: torch.Tensor  # (n_gallery, dim) float32
    gallery_labels: torch.Tensor  # (n_gallery,) int64
    leave_one_out: bool
    chunk_size: int


@dataclass(frozen=True)
class _Totals:
    n_query: int
    hits: dict[int, int]
    n_with_positives: int
    map_sum: float
    r_precision_sum: float


def _features(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (items, dim) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _labels(labels: _Labels, n: int, name: str, device: torch.device) -> torch.Tensor:
    t = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(
            f"{name} must be 1-D with one label per feature row ({n}), got shape {tuple(t.shape)}"
        )
    return t.to(device=device, dtype=torch.int64)


def _prepare(
    query: torch.Tensor,
    query_labels: _Labels,
    gallery: torch.Tensor | None,
    gallery_labels: _Labels | None,
    chunk_size: int,
) -> _Inputs:
    query = _features(query, "query")
    if query.shape[0] == 0:
        raise ValueError("query is empty: at least one query row is needed")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    q_labels = _labels(query_labels, query.shape[0], "query_labels", query.device)
    if gallery is None:
        if gallery_labels is not None:
            raise ValueError("gallery_labels given without gallery")
        return _Inputs(query, q_labels, query.float(), q_labels, True, chunk_size)
    if gallery_labels is None:
        raise ValueError("gallery given without gallery_labels")
    gallery = _features(gallery, "gallery")
    if gallery.shape[0] == 0:
        raise ValueError("gallery is empty: pass gallery=None for leave-one-out")
    if gallery.shape[1] != query.shape[1]:
        raise ValueError(
            f"query and gallery feature widths differ: {query.shape[1]} vs {gallery.shape[1]}"
        )
    if gallery.device != query.device:
        raise ValueError(f"query is on {query.device} but gallery is on {gallery.device}")
    g_labels = _labels(gallery_labels, gallery.shape[0], "gallery_labels", query.device)
    return _Inputs(query, q_labels, gallery.float(), g_labels, False, chunk_size)


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"every k must be an integer >= 1, got {k!r}")
    return tuple(sorted({int(k) for k in ks}))


def _negatives_above_best_positive(
    sims: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> torch.Tensor:
    """Pessimistic 0-based rank of the first positive, per query (meaningless without positives)."""
    best_pos = sims.masked_fill(~pos, float("-inf")).amax(dim=1)  # (chunk,)
    return ((sims >= best_pos[:, None]) & neg).sum(dim=1)  # (chunk,)


def _map_and_r_precision(
    sims: torch.Tensor, pos: torch.Tensor, findable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query MAP@R and R-precision of a chunk; zero for queries with R == 0.

    R counts every positive (pos); only the `findable` ones (finite embeddings) count as retrieved."""
    r = pos.sum(dim=1)  # (chunk,)
    max_r = int(r.max().item())
    if max_r == 0:
        zeros = torch.zeros(sims.shape[0], dtype=torch.float64, device=sims.device)
        return zeros, zeros
    order = sims.topk(max_r, dim=1).indices  # (chunk, max_r)
    ranks = torch.arange(1, max_r + 1, device=sims.device)  # (max_r,)
    rel = findable.gather(1, order) & (ranks[None, :] <= r[:, None])  # (chunk, max_r)
    precision = rel.cumsum(dim=1).double() / ranks  # (chunk, max_r)
    r_safe = r.clamp(min=1).double()
    ap = (precision * rel).sum(dim=1) / r_safe  # (chunk,)
    rp = rel.sum(dim=1).double() / r_safe  # (chunk,)
    return ap, rp


def _accumulate(inputs: _Inputs, ks: tuple[int, ...], with_map: bool) -> _Totals:
    """One pass over query chunks, synchronising with the device once per chunk at most.

    Per-query MAP@R and R-precision are kept and summed once at the end, so that the
    float result does not depend on chunk_size.
    """
    device = inputs.query.device
    n_query = inputs.query.shape[0]
    hit_counts = torch.zeros(len(ks), dtype=torch.int64, device=device)
    ks_t = torch.tensor(ks, dtype=torch.int64, device=device)  # (n_ks,)
    n_with_pos = torch.zeros((), dtype=torch.int64, device=device)
    ap = torch.zeros(n_query if with_map else 0, dtype=torch.float64, device=device)
    rp = torch.zeros_like(ap)
    query_finite = torch.isfinite(inputs.query).all(dim=1)  # (n_query,)
    gallery_finite = torch.isfinite(inputs.gallery).all(dim=1)  # (n_gallery,)
    for start in range(0, n_query, inputs.chunk_size):
        stop = min(start + inputs.chunk_size, n_query)
        sims = inputs.query[start:stop].float() @ inputs.gallery.T  # (chunk, gallery)
        ok = query_finite[start:stop]  # (chunk,)
        sims.masked_fill_(~gallery_finite[None, :] | ~ok[:, None], float("-inf"))  # NaN rows and columns last
        labels = inputs.query_labels[start:stop]
        pos = labels[:, None] == inputs.gallery_labels[None, :]  # (chunk, gallery)
        neg = ~pos
        if inputs.leave_one_out:
            rows = torch.arange(stop - start, device=device)
            cols = rows + start
            sims[rows, cols] = float("-inf")
            pos[rows, cols] = False
            neg[rows, cols] = False
        has_pos = pos.any(dim=1)  # (chunk,)
        n_with_pos += has_pos.sum()
        findable = pos & gallery_finite[None, :]  # (chunk, gallery)
        if ks:
            rank = _negatives_above_best_positive(sims, findable, neg)  # (chunk,)
            hit = (ok & findable.any(dim=1))[:, None] & (rank[:, None] < ks_t[None, :])  # (chunk, n_ks)
            hit_counts += hit.sum(dim=0)
        if with_map:
            chunk_ap, chunk_rp = _map_and_r_precision(sims, pos, findable)
            ap[start:stop], rp[start:stop] = chunk_ap * ok, chunk_rp * ok
    return _Totals(
        n_query=n_query,
        hits=dict(zip(ks, hit_counts.tolist())),
        n_with_positives=int(n_with_pos.item()),
        map_sum=float(ap.sum().item()),
        r_precision_sum=float(rp.sum().item()),
    )


def _mean_over_queries_with_positives(total: float, totals: _Totals) -> float:
    if totals.n_with_positives == 0:
        return float("nan")
    return total / totals.n_with_positives


def _totals(inputs: _Inputs, ks: tuple[int, ...], with_map: bool) -> _Totals:
    totals = _accumulate(inputs, ks, with_map)
    left_out = totals.n_query - totals.n_with_positives
    if left_out:
        where = "no other item of their class" if inputs.leave_one_out else "no item of their class in the gallery"
        warnings.warn(LeftOutQueries(f"{left_out} of {totals.n_query} queries have {where}; they are left out of "
                                     "Recall@K, MAP@R and R-precision"), stacklevel=3)
    return totals


def retrieval_metrics(
    query: torch.Tensor,
    query_labels: _Labels,
    ks: Iterable[int],
    gallery: torch.Tensor | None = None,
    gallery_labels: _Labels | None = None,
    *,
    chunk_size: int = 4096,
    with_map: bool = True,
) -> dict[str, float]:
    """Recall@k for every k in ``ks``, MAP@R and R-precision (unless ``with_map=False``, which skips their
    per-query ranking), in one pass: the one entry point of this module.

    Keys: ``recall_key(k)`` per k, ``MAP_AT_R_KEY`` and ``R_PRECISION_KEY``. Each is averaged over the queries
    with at least one relevant item (``nan`` if none). See the module docstring for modes, tie rules and
    denominators.
    """
    ks = _check_ks(ks)
    inputs = _prepare(query, query_labels, gallery, gallery_labels, chunk_size)
    totals = _totals(inputs, ks, with_map)
    result = {recall_key(k): _mean_over_queries_with_positives(totals.hits[k], totals) for k in ks}
    if with_map:
        result[MAP_AT_R_KEY] = _mean_over_queries_with_positives(totals.map_sum, totals)
        result[R_PRECISION_KEY] = _mean_over_queries_with_positives(totals.r_precision_sum, totals)
    return result


def recall_at_k(query: torch.Tensor, query_labels: _Labels, ks: Iterable[int], gallery: torch.Tensor | None = None,
                gallery_labels: _Labels | None = None, *, chunk_size: int = 4096) -> dict[int, float]:
    """Recall@k (fraction of the queries with a positive, in [0, 1]) by k: retrieval_metrics' recalls."""
    ks = _check_ks(ks)
    metrics = retrieval_metrics(query, query_labels, ks, gallery, gallery_labels, chunk_size=chunk_size,
                                with_map=False)
    return {k: metrics[recall_key(k)] for k in ks}
