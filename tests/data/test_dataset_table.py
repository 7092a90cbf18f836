"""The dataset table is the one place a dataset is declared: what is derived from it agrees with it,
its facts agree with what its reader returns, and its defaults are ones the config accepts."""
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from antimetric.data.readers import read_dataset
from antimetric.data.settings import DATASETS
from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from antimetric.training.config import SECTION_CLASSES, RunConfig, resolve
from tests.fixtures.datasets import make_cars, make_cub, make_inshop, make_oml_table, make_sop

# A fixture per reader module, so that a dataset with a new reader is read here too.
FIXTURE_OF_READER = {"cub": make_cub, "cars": make_cars, "sop": make_sop, "inshop": make_inshop,
                     "oml_table": make_oml_table}
README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_names_used_elsewhere_are_those_of_the_table():
    assert DATASETS == tuple(TABLE)
    for name, row in TABLE.items():
        assert row.name == name


@pytest.mark.parametrize("name", TABLE)
def test_the_reader_of_a_row_reads_its_layout_with_boxes_as_the_row_says(tmp_path, name):
    row = TABLE[name]
    info = FIXTURE_OF_READER[row.reader](tmp_path / name, n_classes=4, per_class=2)
    index = read_dataset(name, tmp_path / name)
    assert index.name == name and len(index.records) == len(info["records"])
    assert {record.box is not None for record in index.records} == {row.has_boxes}
    assert index.sources  # what the manifest watches for edits: a layout's index files, a table
    for relative in index.sources:
        assert (index.root / relative).is_file()


def test_training_defaults_are_config_fields_that_defer_to_the_dataset():
    """A default for a field whose own default is not None would never be used."""
    deferring = {f.name for kind in SECTION_CLASSES for f in dataclasses.fields(kind) if f.default is None}
    for row in TABLE.values():
        assert set(row.defaults()) <= deferring


@pytest.mark.parametrize("name", TABLE)
def test_a_dataset_alone_resolves_to_its_row(name):
    row = TABLE[name]
    config = resolve(RunConfig.from_flat({"data_name": name}))
    flat = config.to_flat()
    assert {key: flat[key] for key in row.defaults()} == row.defaults()
    if row.has_boxes:
        resolve(RunConfig.from_flat({"data_name": name, "crop_type": "cropped"}))
    else:
        with pytest.raises(ConfigError, match=f"which {name} does not have"):
            resolve(RunConfig.from_flat({"data_name": name, "crop_type": "cropped"}))


@pytest.mark.parametrize("name", TABLE)
def test_mean_and_std_are_per_channel_statistics_of_images_in_0_1(name):
    row = TABLE[name]
    assert len(row.mean) == len(row.std) == 3
    assert all(0 < m < 1 for m in row.mean) and all(0 < s < 1 for s in row.std)


def test_the_readme_lists_the_datasets_of_the_table():
    section = README.read_text(encoding="utf-8").split("\n## Datasets\n", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)) == sorted(TABLE)


@pytest.mark.slow
def test_the_config_imports_the_table_without_the_readers():
    """The config (imported by every command) reads the table; the readers, scipy among them, load on use."""
    code = "import sys, antimetric.training.config; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "antimetric.data.table" in loaded
    assert not {"antimetric.data.readers", "scipy", "torch", "numpy"} & loaded
