"""Exact nearest neighbours by dot product (cosine for normalised embeddings), over gallery chunks.

The gallery may be a tensor or a numpy array, also a memory-mapped float16 file far larger than
memory. It is cut into spans of rows that worker threads search independently, each reading its
span `chunk_size` rows at a time into its own float32 buffer of a few MB (which stays in the CPU's
cache for the product that follows), and keeping its span's best k per query; the spans' bests are
merged at the end. Memory is bounded by the buffers and the spans' similarities (SIMILARITY_BYTES).
A non-finite similarity (a NaN embedding) ranks below every finite one.

Why threads of one intra-op thread each, and not torch's own threading: alternating torch's
conversion and MKL's product, each parallel over the CPU's cores, made every chunk wait for a
sleeping thread to be woken; on a loaded 2-core machine a 16-query search of a 60k x 24,576 float16
gallery took 3-20 s that way, and 0.5 s this way (benchmarks/retrieval.py, benchmarks/RESULTS.md).
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

CHUNK_BYTES = 4 << 20  # float32 bytes of gallery rows converted and multiplied at a time
SIMILARITY_BYTES = 64 << 20  # the float32 similarities held at once, over all spans being searched
QUERY_BLOCK = 1024  # queries searched together; a larger batch is searched block by block
_SPANS_PER_WORKER = 4  # several spans per thread, so that a thread slowed by other work takes fewer


def nearest(query: torch.Tensor, gallery: torch.Tensor | np.ndarray, k: int, *, exclude_self: bool = False,
            chunk_size: int | None = None, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities (n, k') float32, gallery indices (n, k') int64), best first, k' = min(k, gallery rows
    left). exclude_self: query i is gallery item i (leave-one-out), which is never returned for it.
    chunk_size: gallery rows per product (default: CHUNK_BYTES of float32 rows); workers: threads
    (default: torch.get_num_threads())."""
    query = torch.as_tensor(query).detach().float().cpu()
    gallery = _as_tensor(gallery)
    n, total = query.shape[0], gallery.shape[0]
    k = min(k, total - 1 if exclude_self else total)
    if k <= 0 or n == 0:
        return torch.full((n, max(k, 0)), -torch.inf), torch.full((n, max(k, 0)), -1, dtype=torch.int64)
    chunk = chunk_size or max(1, CHUNK_BYTES // (4 * gallery.shape[1]))
    workers = workers or torch.get_num_threads()
    parts = [_search_block(query[first:first + QUERY_BLOCK], first, gallery, k, exclude_self, chunk, workers)
             for first in range(0, n, QUERY_BLOCK)]
    return torch.cat([sims for sims, _ in parts]), torch.cat([index for _, index in parts])


def _search_block(query: torch.Tensor, first: int, gallery: torch.Tensor, k: int, exclude_self: bool, chunk: int,
                  workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k of queries first .. first+len(query) over the whole gallery, span by span."""
    n, total = query.shape[0], gallery.shape[0]
    span = max(chunk, min(SIMILARITY_BYTES // (4 * n * workers), -(-total // (workers * _SPANS_PER_WORKER))))
    spans = [(start, min(start + span, total)) for start in range(0, total, span)]
    workers = min(workers, len(spans))

    def search(bounds: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return _search_span(query, first, gallery, bounds, k, exclude_self, chunk)

    if workers == 1:
        parts = [search(bounds) for bounds in spans]
    else:
        threads = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                parts = list(pool.map(search, spans))
        finally:
            torch.set_num_threads(threads)  # the workers' setting also changed torch's process-wide default
    sims, index = torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
    best, order = sims.topk(k, dim=1)
    return best, index.gather(1, order)


def _search_span(query: torch.Tensor, first: int, gallery: torch.Tensor, bounds: tuple[int, int], k: int,
                 exclude_self: bool, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best min(k, span) of gallery rows start .. stop for each query: (n, k') similarities and indices."""
    start, stop = bounds
    sims = torch.empty(stop - start, query.shape[0])  # (rows, n): each product writes whole rows
    converted = torch.empty(min(chunk, stop - start), gallery.shape[1]) if gallery.dtype != torch.float32 else None
    for at in range(start, stop, chunk):
        block = gallery[at:min(at + chunk, stop)]  # (c, dim)
        if converted is not None:
            block = converted[:len(block)].copy_(block)
        torch.mm(block, query.T, out=sims[at - start:at - start + len(block)])
    torch.nan_to_num_(sims, nan=-torch.inf, posinf=-torch.inf)
    own_first, own_stop = max(start, first), min(stop, first + query.shape[0])  # rows here that are queries
    if exclude_self and own_first < own_stop:
        own = torch.arange(own_first, own_stop)
        sims[own - start, own - first] = -torch.inf
    best, rows = sims.topk(min(k, stop - start), dim=0)  # (k', n)
    return best.T, rows.T + start


def _as_tensor(gallery: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The gallery as a CPU tensor sharing its memory (a read-only memmap too: it is only read here)."""
    if isinstance(gallery, torch.Tensor):
        return gallery.detach().cpu()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(gallery))
