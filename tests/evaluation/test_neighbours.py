"""antimetric.evaluation.neighbours.nearest against a brute-force top-k over the whole similarity matrix."""
import warnings

import numpy as np
import pytest
import torch

import antimetric.evaluation.neighbours as neighbours
from antimetric.evaluation.neighbours import nearest


def brute_force(query, gallery, k, exclude_self=False):
    sims = query.float() @ torch.as_tensor(np.asarray(gallery)).float().T
    sims = torch.nan_to_num(sims, nan=-torch.inf, posinf=-torch.inf)
    if exclude_self:
        own = torch.arange(min(len(query), len(gallery)))
        sims[own, own] = -torch.inf
    return sims.topk(min(k, sims.shape[1] - exclude_self), dim=1)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 24, generator=g), torch.randn(1000, 24, generator=g)


@pytest.mark.parametrize("chunk_size,workers", [(None, None), (7, 1), (7, 2), (64, 3), (1000, 2)])
def test_equals_brute_force_for_any_chunking_and_threads(data, chunk_size, workers):
    query, gallery = data
    sims, index = nearest(query, gallery, 10, chunk_size=chunk_size, workers=workers)
    expected = brute_force(query, gallery, 10)
    assert torch.equal(index, expected.indices)
    torch.testing.assert_close(sims, expected.values, rtol=1e-5, atol=1e-5)


def test_float16_memmap_gallery(tmp_path, data):
    query, gallery = data
    stored = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float16, shape=tuple(gallery.shape))
    stored[:] = gallery.numpy().astype(np.float16)
    stored.flush()
    read = np.load(tmp_path / "g.npy", mmap_mode="r")  # read-only: searched without a copy or a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sims, index = nearest(query, read, 5, chunk_size=33, workers=2)
    expected = brute_force(query, read, 5)  # the float16 values, multiplied in float32
    assert torch.equal(index, expected.indices)
    torch.testing.assert_close(sims, expected.values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("workers", [1, 2])
def test_exclude_self_never_returns_the_query_itself(data, workers):
    _, gallery = data
    gallery = torch.cat([gallery, gallery[:5]])  # exact duplicates of rows 0-4 at 1000-1004: still returned
    query = gallery[:60]
    sims, index = nearest(query, gallery, 4, exclude_self=True, chunk_size=13, workers=workers)
    assert not (index == torch.arange(60)[:, None]).any()
    assert (index[:5, 0] == torch.arange(1000, 1005)).all()  # the duplicate, found by index not by value
    expected = brute_force(query, gallery, 4, exclude_self=True)
    assert torch.equal(index, expected.indices)


def test_nan_rows_rank_last_and_nan_queries_find_nothing(data):
    query, gallery = data
    gallery = gallery[:30].clone()
    gallery[[3, 17]] = float("nan")
    query = query[:4].clone()
    query[2] = float("nan")
    sims, index = nearest(query, gallery, 30, chunk_size=8, workers=2)
    for row in (0, 1, 3):
        assert set(index[row, -2:].tolist()) == {3, 17} and torch.isinf(sims[row, -2:]).all()
        assert torch.isfinite(sims[row, :-2]).all()
        expected = brute_force(query[row:row + 1], gallery, 28)
        assert torch.equal(index[row, :28], expected.indices[0])
    assert torch.isinf(sims[2]).all() and (sims[2] < 0).all()


def test_k_larger_than_gallery_and_empty_inputs(data):
    query, gallery = data
    sims, index = nearest(query[:3], gallery[:6], 50)
    assert sims.shape == index.shape == (3, 6)
    sims, index = nearest(query[:3], gallery[:6], 50, exclude_self=True)
    assert sims.shape == (3, 5)
    sims, index = nearest(query[:0], gallery, 5)
    assert sims.shape == (0, 5)
    sims, index = nearest(query[:2], gallery[:1], 5, exclude_self=True)
    assert sims.shape == (2, 0)


def test_query_blocks_and_torch_threads_are_restored(data, monkeypatch):
    query, gallery = data
    monkeypatch.setattr(neighbours, "QUERY_BLOCK", 7)  # 40 queries in 6 blocks
    threads = torch.get_num_threads()
    sims, index = nearest(query, gallery, 3, exclude_self=True, chunk_size=50, workers=2)
    assert torch.get_num_threads() == threads
    expected = brute_force(query, gallery, 3, exclude_self=True)
    assert torch.equal(index, expected.indices)
