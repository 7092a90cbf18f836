"""Metrics per category (a table's `category` column): each category scored on its own images only."""
import torch

from antimetric.evaluation.embed import Embeddings, score, score_per_category


def _embeddings(features, labels):
    return Embeddings(torch.tensor(features, dtype=torch.float32), torch.tensor(labels), [str(i) for i in labels])


def test_each_category_is_scored_on_its_own_queries_and_gallery():
    # category a: classes 0, 1 (query 0 retrieves a class-1 item of b's first, if b were searched too);
    # category b: classes 2, 3
    query = _embeddings([[1, 0], [0, 1], [1, 0.1], [0.1, 1]], [0, 1, 2, 3])
    gallery = _embeddings([[0.9, 0.1], [0.1, 0.9], [1, 0], [0, 1]], [2, 1, 0, 3])
    cats_q, cats_g = ["a", "a", "b", "b"], ["b", "a", "a", "b"]
    whole = score(query, (1,), gallery)
    per = score_per_category(query, cats_q, (1,), gallery, cats_g)
    assert set(per) == {"a", "b"}
    # within a, query 0 (class 0) finds gallery item 2 (class 0), query 1 finds item 1: both hits
    assert per["a"]["recall_at_1"] == 1.0
    # over the whole gallery query 0 finds item 0 (class 2, category b) first: a miss
    assert whole["recall_at_1"] < 1.0
    assert per["b"] == score(_embeddings([[1, 0.1], [0.1, 1]], [2, 3]), (1,),
                             _embeddings([[0.9, 0.1], [0, 1]], [2, 3]))


def test_leave_one_out_per_category_and_no_category_is_in_none():
    query = _embeddings([[1, 0], [1, 0.05], [0, 1], [0.05, 1], [1, 0.02]], [0, 0, 1, 1, 1])
    per = score_per_category(query, ["x", "x", "y", "y", None], (1,))
    assert set(per) == {"x", "y"}
    assert per["x"]["recall_at_1"] == 1.0 and per["y"]["recall_at_1"] == 1.0
    assert score(query, (1,))["recall_at_1"] < 1.0  # item 4 (class 1, no category) is nearest to class 0's
