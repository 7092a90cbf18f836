import numpy as np

from antimetric.data import demo
from antimetric.data.layout import read_dataset
from antimetric.data.manifest import prepare


def test_demo_is_a_cub_layout_with_disjoint_halves(demo_data_path):
    index = read_dataset("demo", demo_data_path / "demo")
    summary = index.summary()
    assert summary["train"] == {"images": 30 * demo.IMAGES_PER_CLASS, "classes": 30}
    assert summary["test"] == {"images": 30 * demo.IMAGES_PER_CLASS, "classes": 30}
    assert not {r.label for r in index.split("train")} & {r.label for r in index.split("test")}
    for record in index.records[:50]:
        left, upper, right, lower = record.box
        assert 0 <= left < right <= demo.SIZE and 0 <= upper < lower <= demo.SIZE


def test_demo_images_are_all_readable(demo_data_path, tmp_path):
    report = prepare("demo", demo_data_path, progress=False)
    assert report.unreadable == [] and report.splits["train"]["classes"] == 30


def test_generation_is_deterministic_and_classes_are_distinct_pairs():
    first = demo.render("plus", "ring", np.random.default_rng(5))
    again = demo.render("plus", "ring", np.random.default_rng(5))
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0])) and first[1] == again[1]
    pairs = demo.class_pairs(np.random.default_rng(0))
    assert len(set(pairs)) == demo.N_CLASSES


def test_existing_dataset_is_not_regenerated(tmp_path):
    target = tmp_path / "demo"
    target.mkdir()
    (target / "demo-version.txt").write_text(demo.VERSION + "\n")
    demo.ensure_demo(target)
    assert sorted(p.name for p in target.iterdir()) == ["demo-version.txt"]
