import numpy as np
import pytest

from antimetric.errors import ConfigError
from antimetric.training.meta_classes import assign_meta_classes, load_meta_ids, save_meta_ids


@pytest.mark.parametrize("n_classes,meta,ensemble", [
    (100, 12, 48), (98, 12, 48), (11318, 512, 8), (24, 4, 8), (13, 5, 3),
    (8, 2, 3), (27, 3, 3), (64, 2, 6),  # exactly as many codes as classes
])
def test_balanced_rows_and_unique_codes(n_classes, meta, ensemble):
    ids = assign_meta_classes(n_classes, meta, ensemble, seed=1)
    assert ids.shape == (ensemble, n_classes)
    assert ids.min() >= 0 and ids.max() < meta
    for row in ids:
        counts = np.bincount(row, minlength=meta)
        assert counts.max() - counts.min() <= 1
    assert np.unique(ids, axis=1).shape[1] == n_classes


def test_seeded():
    a = assign_meta_classes(50, 5, 6, seed=3)
    assert np.array_equal(a, assign_meta_classes(50, 5, 6, seed=3))
    assert not np.array_equal(a, assign_meta_classes(50, 5, 6, seed=4))
    assert not np.array_equal(a[0], a[1])  # each branch draws its own partition


@pytest.mark.parametrize("n_classes,meta,ensemble,needle", [
    (10, 12, 4, "exceeds the 10 training classes"),
    (100, 3, 4, "give 81 codes for 100 classes"),
    (1, 2, 4, "the training split has 1 class, and meta-classes need 2 or more"),
    (1, 4, 4, "the training split has 1 class, and meta-classes need 2 or more"),
])
def test_impossible_sizes_are_rejected(n_classes, meta, ensemble, needle):
    with pytest.raises(ConfigError, match=needle):
        assign_meta_classes(n_classes, meta, ensemble, seed=0)


def test_save_and_reload(tmp_path):
    labels = [101, 102, 105, 107, 110]
    ids = assign_meta_classes(5, 2, 4, seed=0)
    path = tmp_path / "meta_ids.json"
    save_meta_ids(path, ids, labels)
    assert np.array_equal(load_meta_ids(path, labels, 2, 4), ids)
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ConfigError, match="other training classes"):
        load_meta_ids(path, [1, 2, 3, 4, 5], 2, 4)
    with pytest.raises(ConfigError, match="needs 5 branches"):
        load_meta_ids(path, labels, 2, 5)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_meta_ids(tmp_path / "broken.json", labels, 2, 4)
