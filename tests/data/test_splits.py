import pytest

from antimetric.data.records import DatasetIndex, ImageRecord
from antimetric.data.splits import make_splits
from antimetric.errors import ConfigError


def _index(n_train=10, n_test=6, per_class=5, inshop=False):
    records = [ImageRecord(f"tr/{c}_{i}.jpg", c, "train") for c in range(n_train) for i in range(per_class)]
    if inshop:
        records += [ImageRecord(f"q/{c}.jpg", c, "query") for c in range(100, 100 + n_test)]
        records += [ImageRecord(f"g/{c}.jpg", c, "gallery") for c in range(100, 100 + n_test)]
    else:
        records += [ImageRecord(f"te/{c}_{i}.jpg", c, "test") for c in range(100, 100 + n_test) for i in range(3)]
    return DatasetIndex("x", ".", records)


def test_validation_classes_are_held_out_of_training():
    splits = make_splits(_index(), val_fraction=0.3, max_per_class=300, seed=0)
    val_classes = {r.label for r in splits.val.query}
    assert len(val_classes) == 3
    assert not val_classes & {r.label for r in splits.train}
    assert splits.train_classes == sorted({r.label for r in splits.train})
    assert len(splits.train) == 7 * 5
    assert {r.label for r in splits.test.query} == set(range(100, 106)) and splits.test.gallery is None
    assert make_splits(_index(), 0.3, 300, seed=0).val.query == splits.val.query


def test_no_validation_and_per_class_cap():
    splits = make_splits(_index(per_class=8), val_fraction=0.0, max_per_class=3, seed=0)
    assert splits.val is None
    counts = {}
    for r in splits.train:
        counts[r.label] = counts.get(r.label, 0) + 1
    assert set(counts.values()) == {3}


def test_inshop_uses_query_and_gallery():
    splits = make_splits(_index(inshop=True), 0.0, 300, seed=0)
    assert splits.test.gallery is not None and len(splits.test.query) == len(splits.test.gallery) == 6


def test_validation_fraction_that_leaves_too_few_classes():
    with pytest.raises(ConfigError, match="--val-fraction"):
        make_splits(_index(n_train=4), val_fraction=0.9, max_per_class=300, seed=0)
