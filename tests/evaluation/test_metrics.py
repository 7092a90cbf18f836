import math

import numpy as np
import pytest
import torch

from antimetric.evaluation.metrics import (
    MAP_AT_R_KEY,
    R_PRECISION_KEY,
    LeftOutQueries,
    recall_at_k,
    recall_key,
    retrieval_metrics,
)

KS = (1, 2, 4, 8, 1000)


def map_at_r(query, query_labels, gallery=None, gallery_labels=None):
    return retrieval_metrics(query, query_labels, (), gallery, gallery_labels)[MAP_AT_R_KEY]


def r_precision(query, query_labels, gallery=None, gallery_labels=None):
    return retrieval_metrics(query, query_labels, (), gallery, gallery_labels)[R_PRECISION_KEY]


def reference(query, query_labels, ks, gallery=None, gallery_labels=None):
    """Brute force over the full similarity matrix, one query at a time. Non-finite rows are misses:
    such a query scores 0; such a gallery item ranks last and is never a found positive."""
    leave_one_out = gallery is None
    q = query.float().numpy().astype(np.float64)
    ql = list(np.asarray(query_labels))
    g = q if leave_one_out else gallery.float().numpy().astype(np.float64)
    gl = ql if leave_one_out else list(np.asarray(gallery_labels))
    q_ok, g_ok = np.isfinite(q).all(1), np.isfinite(g).all(1)
    with np.errstate(invalid="ignore", over="ignore"):
        sims = np.where(q_ok[:, None] & g_ok[None, :], np.nan_to_num(q) @ np.nan_to_num(g).T, -np.inf)
    hits = {k: 0 for k in ks}
    aps, rps = [], []
    for i in range(len(q)):
        candidates = [j for j in range(len(g)) if not (leave_one_out and j == i)]
        positives = [j for j in candidates if gl[j] == ql[i]]
        negatives = [j for j in candidates if gl[j] != ql[i]]
        if not positives:
            continue
        found = [j for j in positives if g_ok[j]]
        if not q_ok[i]:
            aps.append(0.0)
            rps.append(0.0)
            continue
        if found:
            best = max(sims[i, j] for j in found)
            rank = sum(1 for j in negatives if sims[i, j] >= best)
            for k in ks:
                if rank < k:
                    hits[k] += 1
        ranked = sorted(candidates, key=lambda j: -sims[i, j])
        r = len(positives)
        n_rel, ap = 0, 0.0
        for position, j in enumerate(ranked[:r], start=1):
            if gl[j] == ql[i] and g_ok[j]:
                n_rel += 1
                ap += n_rel / position
        aps.append(ap / r)
        rps.append(n_rel / r)
    recall = {k: hits[k] / len(aps) if aps else math.nan for k in ks}  # over the queries with a positive
    mean = (lambda xs: sum(xs) / len(xs)) if aps else (lambda xs: math.nan)
    return recall, mean(aps), mean(rps)


def random_data(seed, n, dim=8, n_classes=6):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    return x, torch.randint(0, n_classes, (n,), generator=gen)


def quantised_data(seed, n, dim=4, n_classes=4):
    """Small-integer features: dot products are exact, so many similarities tie."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, dim), generator=gen).float()
    x = torch.cat([x, x[: n // 4]])  # exact duplicates
    labels = torch.randint(0, n_classes, (x.shape[0],), generator=gen)
    return x, labels


def assert_matches_reference(query, query_labels, gallery=None, gallery_labels=None, **kw):
    got = retrieval_metrics(query, query_labels, KS, gallery, gallery_labels, **kw)
    recall, mapr, rprec = reference(query, query_labels, KS, gallery, gallery_labels)
    assert {k: got[recall_key(k)] for k in KS} == pytest.approx(recall)
    assert got[MAP_AT_R_KEY] == pytest.approx(mapr)
    assert got[R_PRECISION_KEY] == pytest.approx(rprec)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_one_out_matches_reference(seed):
    x, y = random_data(seed, 60)
    assert_matches_reference(x, y, chunk_size=7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_to_gallery_matches_reference(seed):
    q, ql = random_data(seed, 40, n_classes=8)
    g, gl = random_data(seed + 100, 50, n_classes=6)  # labels 6, 7: queries without positives
    assert_matches_reference(q, ql, g, gl, chunk_size=16)


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_with_ties_matches_pessimistic_reference(seed):
    x, y = quantised_data(seed, 48)
    expected, _, _ = reference(x, y, KS)
    assert recall_at_k(x, y, KS, chunk_size=5) == pytest.approx(expected)
    q, ql = quantised_data(seed + 10, 20)
    expected, _, _ = reference(q, ql, KS, x, y)
    assert recall_at_k(q, ql, KS, x, y, chunk_size=5) == pytest.approx(expected)


def test_tie_between_positive_and_negative_is_a_miss_in_either_order():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    for gl in ([0, 1, 1], [1, 0, 1]):
        assert recall_at_k(q, [0], [1, 2], g, gl) == {1: 0.0, 2: 1.0}


def test_leave_one_out_excludes_self_by_index_but_keeps_duplicates():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert recall_at_k(x, [0, 0, 1, 1], [1]) == {1: 1.0}  # each finds its duplicate, never itself
    # the duplicate is a negative for query 0 and its positive lies further away
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    assert recall_at_k(x, [0, 1, 0, 1], [1, 2])[1] == 0.0
    assert recall_at_k(x, [0, 1, 0, 1], [1, 2])[2] == pytest.approx(2 / 4)


def test_chunk_size_does_not_change_results():
    x, y = random_data(3, 37)
    sizes = (1, 3, x.shape[0] + 10)
    results = [retrieval_metrics(x, y, KS, chunk_size=c) for c in sizes]
    assert results[0] == results[1] == results[2]
    q, ql = random_data(4, 11)
    results = [retrieval_metrics(q, ql, KS, x, y, chunk_size=c) for c in sizes]
    assert results[0] == results[1] == results[2]


def test_chunk_size_does_not_change_recall_with_ties():
    # MAP@R with ties follows topk's tie order, which may depend on the chunk shape.
    x, y = quantised_data(3, 37)
    sizes = (1, 3, x.shape[0] + 10)
    results = [recall_at_k(x, y, KS, chunk_size=c) for c in sizes]
    assert results[0] == results[1] == results[2]
    q, ql = quantised_data(4, 11)
    results = [recall_at_k(q, ql, KS, x, y, chunk_size=c) for c in sizes]
    assert results[0] == results[1] == results[2]


def four_points():
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 25.0, 90.0]))
    return torch.stack([angles.cos(), angles.sin()], dim=1), torch.tensor([0, 0, 1, 0])


def test_hand_made_example():
    # Nearest neighbours: 0->1 (hit), 1->0 (hit), 3->2 (miss).
    # Point 2 has no positive at all (left out); point 3 finds one (1) at rank 2.
    x, y = four_points()
    assert recall_at_k(x, y, [1, 2, 3]) == pytest.approx({1: 2 / 3, 2: 1.0, 3: 1.0})
    # R = 2 for points 0, 1, 3. Top-2 relevance: 0: [1, 0], 1: [1, 0], 3: [0, 1].
    # AP: 0.5, 0.5 and (1/2) * (1/2) = 0.25; point 2 (R = 0) is left out.
    assert map_at_r(x, y) == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert r_precision(x, y) == pytest.approx(0.5)


def test_map_at_r_rewards_order_within_top_r():
    q = torch.tensor([[1.0, 0.0]])
    angles = torch.deg2rad(torch.tensor([5.0, 10.0, 20.0, 30.0]))
    g = torch.stack([angles.cos(), angles.sin()], dim=1)
    # relevant at ranks 1 and 3 of R = 3: (1/3) * (1/1 + 0 + 2/3)
    assert map_at_r(q, [7], g, [7, 1, 7, 7]) == pytest.approx((1 + 2 / 3) / 3)
    assert r_precision(q, [7], g, [7, 1, 7, 7]) == pytest.approx(2 / 3)
    assert map_at_r(q, [7], g, [7, 7, 7, 1]) == pytest.approx(1.0)


def test_queries_without_positives_are_left_out_with_a_warning():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    with pytest.warns(LeftOutQueries, match="1 of 2 queries have no item of their class in the gallery"):
        got = retrieval_metrics(q, [0, 5], [1, 2], g, [0, 1])
    assert got == {recall_key(1): 1.0, recall_key(2): 1.0, MAP_AT_R_KEY: 1.0, R_PRECISION_KEY: 1.0}
    with pytest.warns(LeftOutQueries, match="2 of 2"):
        got = retrieval_metrics(q, [4, 5], [1], g, [0, 1])
    assert all(math.isnan(value) for value in got.values())
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])  # leave-one-out: class 7 has one image
    with pytest.warns(LeftOutQueries, match="1 of 3 queries have no other item of their class"):
        assert recall_at_k(x, [3, 3, 7], [1]) == {1: 1.0}


def test_single_item_leave_one_out_is_left_out():
    with pytest.warns(LeftOutQueries):
        got = retrieval_metrics(torch.ones(1, 3), [0], [1])
    assert math.isnan(got[recall_key(1)]) and math.isnan(got[MAP_AT_R_KEY])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(dtype):
    x, y = random_data(5, 40)
    x = x.to(dtype)
    got = retrieval_metrics(x, y, KS, chunk_size=9)
    assert got == retrieval_metrics(x.float(), y, KS, chunk_size=9)
    assert_matches_reference(x, y)


def test_labels_as_list_and_numpy_and_consistent_wrappers():
    x, y = random_data(6, 30)
    from_tensor = retrieval_metrics(x, y, [1, 5])
    assert retrieval_metrics(x, y.tolist(), [1, 5]) == from_tensor
    assert retrieval_metrics(x, y.numpy().astype(np.int32), [5, 1, 1]) == from_tensor
    expected_recall = {1: from_tensor["recall_at_1"], 5: from_tensor["recall_at_5"]}
    assert recall_at_k(x, y, [1, 5]) == expected_recall
    assert retrieval_metrics(x, y, [1, 5], with_map=False) == {key: from_tensor[key] for key in ("recall_at_1",
                                                                                                  "recall_at_5")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = random_data(7, 200)
    cpu = retrieval_metrics(x, y, KS, chunk_size=64)
    cuda = retrieval_metrics(x.cuda(), y.cuda(), KS, chunk_size=64)
    assert cuda == pytest.approx(cpu)


X = torch.zeros(4, 3)
Y = [0, 1, 0, 1]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((X, [0, 1, 0], [1]), {}, "query_labels"),
        ((X, Y, [1], X), {}, "without gallery_labels"),
        ((X, Y, [1], None, Y), {}, "without gallery"),
        ((X, Y, [1], X, [0, 1]), {}, "gallery_labels"),
        ((X, Y, [0]), {}, "k must be"),
        ((X, Y, [1, -2]), {}, "k must be"),
        ((torch.zeros(0, 3), [], [1]), {}, "query is empty"),
        ((torch.zeros(4), Y, [1]), {}, "2-D"),
        ((X, Y, [1], torch.zeros(2, 3, 1), [0, 1]), {}, "2-D"),
        ((X, Y, [1], torch.zeros(2, 5), [0, 1]), {}, "widths differ"),
        ((X, Y, [1], torch.zeros(0, 3), []), {}, "gallery is empty"),
        ((X, [0.0, 1.0, 0.0, 1.0], [1]), {}, "integers"),
        ((torch.zeros(4, 3, dtype=torch.int64), Y, [1]), {}, "floating-point"),
        ((X, Y, [1]), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_validation_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(*args, **kwargs)


def test_validation_in_single_metric_functions():
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(X, Y, [0])
    with pytest.raises(ValueError, match="query_labels"):
        map_at_r(X, [0, 1])
    with pytest.raises(ValueError, match="widths differ"):
        r_precision(X, Y, torch.zeros(2, 5), [0, 1])


def test_a_diverged_network_scores_zero_not_one():
    """NaN embeddings (a run whose loss became NaN) used to make every query a hit."""
    x = torch.full((12, 4), float("nan"))
    labels = torch.arange(12) % 3
    got = retrieval_metrics(x, labels, KS)
    assert all(got[recall_key(k)] == 0.0 for k in KS)
    assert got[MAP_AT_R_KEY] == 0.0 and got[R_PRECISION_KEY] == 0.0
    assert recall_at_k(x[:4], labels[:4], [1], x, labels) == {1: 0.0}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_are_misses_and_match_the_reference(seed, bad):
    x, y = random_data(seed, 40)
    x[::5, 1] = bad  # 8 rows: misses as queries, never found as gallery items
    assert_matches_reference(x, y, chunk_size=6)
    q, ql = random_data(seed + 50, 20)
    q[::4, 0] = bad
    assert_matches_reference(q, ql, x, y, chunk_size=7)
    finite = torch.isfinite(x).all(1)
    assert recall_at_k(x, y, [1000])[1000] <= finite.float().mean().item()
