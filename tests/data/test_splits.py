import pytest

from antimetric.data.records import DatasetIndex, ImageRecord
from antimetric.data.splits import class_folds, make_splits
from antimetric.data.splits import test_set as scored_test_set  # not a test of its own
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


# What make_splits drew on 2026-11-29 (commit 98f36cb), before val_fold existed: seed 7, 12 classes of 6 images,
# 0.25 held out, at most 4 images per class. Kept image numbers per training class.
RECORDED_TRAIN = {0: [0, 1, 2, 3], 1: [0, 2, 4, 5], 2: [1, 2, 3, 4], 3: [1, 2, 3, 4], 4: [2, 3, 4, 5],
                  5: [0, 1, 4, 5], 7: [0, 1, 4, 5], 10: [2, 3, 4, 5], 11: [1, 3, 4, 5]}


@pytest.mark.parametrize("val_fold", [None, 0])
def test_without_val_fold_the_split_is_as_recorded_and_fold_0_is_it(val_fold):
    splits = make_splits(_index(n_train=12, per_class=6), 0.25, 4, seed=7, val_fold=val_fold)
    assert sorted({r.label for r in splits.val.query}) == [6, 8, 9]
    assert splits.train_classes == sorted(RECORDED_TRAIN)
    assert [r.path for r in splits.train] == [f"tr/{c}_{i}.jpg" for c, kept in RECORDED_TRAIN.items() for i in kept]


def test_class_folds_are_disjoint_equal_and_seeded():
    folds = class_folds(list(range(30)), 0.2, seed=3)
    assert [len(f) for f in folds] == [6] * 5
    assert sorted(c for f in folds for c in f) == list(range(30))
    assert folds == class_folds(list(range(30)), 0.2, seed=3)
    assert folds != class_folds(list(range(30)), 0.2, seed=4)
    assert all(f == sorted(f) for f in folds)


def test_classes_left_over_by_the_folds_always_train():
    folds = class_folds(list(range(10)), 0.3, seed=0)
    assert [len(f) for f in folds] == [3, 3, 3]
    assert len(set(range(10)) - {c for f in folds for c in f}) == 1
    assert class_folds(list(range(10)), 0.0, seed=0) == []


def test_repeats_over_folds_validate_on_disjoint_classes():
    index = _index(n_train=10, per_class=6)
    seen = set()
    for fold in range(3):
        splits = make_splits(index, 0.3, 4, seed=5, val_fold=fold)
        val_classes = {r.label for r in splits.val.query}
        assert val_classes == set(class_folds(list(range(10)), 0.3, seed=5)[fold])
        assert not val_classes & seen and not val_classes & {r.label for r in splits.train}
        assert splits.train_classes == sorted(set(range(10)) - val_classes)
        assert len(splits.train) == 7 * 4  # the cap still applies
        seen |= val_classes


@pytest.mark.parametrize("n_train,fraction,fold,message", [
    (30, 0.2, 5, "--repeats 6 needs 6 validation folds but --val-fraction 0.2 of 30 training classes gives 5; "
                 "lower --repeats or --val-fraction"),
    (10, 0.0, 0, "--repeats 1 needs 1 validation fold but --val-fraction 0.0 of 10 training classes gives 0; "
                 "choose a --val-fraction above 0"),
])
def test_more_folds_than_the_fraction_allows(n_train, fraction, fold, message):
    with pytest.raises(ConfigError) as error:
        make_splits(_index(n_train=n_train), fraction, 300, seed=0, val_fold=fold)
    assert str(error.value) == message


def test_folds_leave_two_classes_on_each_side():
    with pytest.raises(ConfigError, match="--val-fraction 0.9 holds out 4 of 4"):
        class_folds(list(range(4)), 0.9, seed=0)


def test_a_run_config_picks_its_split_seed_and_fold():
    """--split-seed and --val-fold reach the split: without them a run holds out the --seed draw it always
    has; with them, fold R of the classes drawn with the split seed, whatever the training --seed."""
    from antimetric.training.config import RunConfig
    from antimetric.training.session import config_splits

    index = _index(n_train=20)
    train_classes = list(range(20))

    def held_out(**values) -> set[int]:
        config = RunConfig.from_flat({"val_fraction": 0.2, "seed": 5, **values})
        return {r.label for r in config_splits(config, index).val.query}

    assert held_out() == {r.label for r in make_splits(index, 0.2, 300, seed=5).val.query}
    assert held_out(split_seed=3) == {r.label for r in make_splits(index, 0.2, 300, seed=3).val.query}
    folds = class_folds(train_classes, 0.2, seed=3)
    assert [held_out(split_seed=3, val_fold=r, seed=r) for r in range(4)] == [set(f) for f in folds[:4]]
    assert held_out(val_fold=1) == set(class_folds(train_classes, 0.2, seed=5)[1])


def test_a_test_set_where_no_query_has_anything_to_find_is_refused_in_one_line():
    """Queries without a positive are left out of the metrics; with none left, every metric would be NaN."""
    single = DatasetIndex("x", ".", [ImageRecord("tr/a.jpg", 0, "train"), ImageRecord("tr/b.jpg", 1, "train"),
                                     ImageRecord("te/c.jpg", 2, "test"), ImageRecord("te/d.jpg", 3, "test")])
    with pytest.raises(ConfigError, match="each of its 2 test classes has a single image") as refused:
        scored_test_set(single)
    assert "\n" not in str(refused.value)
    unmatched = DatasetIndex("x", ".", [ImageRecord("q/a.jpg", 2, "query"), ImageRecord("g/b.jpg", 3, "gallery")])
    with pytest.raises(ConfigError, match="no query's class has an image in the gallery"):
        scored_test_set(unmatched)
    one_pair = DatasetIndex("x", ".", single.records + [ImageRecord("te/e.jpg", 3, "test")])
    assert len(scored_test_set(one_pair).query) == 3  # one class of two images: its queries can be scored
