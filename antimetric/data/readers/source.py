"""Where a dataset is and how it is read: a benchmark in its official layout (`--data-name cub`), or a user's own
images (`--data PATH`): a folder of class subfolders or a table in open-metric-learning's columns.

The manifest, its lock and the resized-image cache of a dataset live in its `work_dir`: a benchmark's folder
under --data-path; for a user's own data, the hidden subfolder `.antimetric` of its folder (files written into
a folder of classes itself would change its modification time, which tells that an image was added or removed),
where a table's manifest is named after the table, so that two tables of one image folder keep one each.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from antimetric.data.records import DatasetIndex
from antimetric.data.settings import DEFAULT_DATA_PATH, DataConfig
from antimetric.errors import ConfigError

BENCHMARK, FOLDER, TABLE_FORM = "benchmark", "folder", "table"
TABLE_SUFFIXES = (".csv", ".parquet")
MANIFEST_NAME = "antimetric-manifest.json"
_OWN_LOCK = "antimetric"  # a user's data holds its own lock, hidden: `.antimetric.lock`
WORK_FOLDER = ".antimetric"  # in the folder of a user's own data: its manifest, lock and resized images


@dataclass(frozen=True)
class DataSource:
    name: str  # what runs, tags and messages call it: a benchmark's name, a folder's name or a table's stem
    dataset_dir: Path  # the folder the data is in: a benchmark's, the user's folder, a table's image root
    form: str = BENCHMARK  # BENCHMARK, FOLDER or TABLE_FORM
    table: Path | None = None  # the table file (TABLE_FORM)
    test_classes: float = 0.5  # FOLDER: fraction of its classes held out as test classes
    test_split_seed: int = 0  # FOLDER: seed of that draw
    allow_shared_labels: bool = False  # TABLE_FORM: accept labels in both train and test rows

    @property
    def own(self) -> bool:
        """A user's folder or table, rather than a benchmark."""
        return self.form != BENCHMARK

    @property
    def work_dir(self) -> Path:
        """Where antimetric writes the dataset's manifest and resized images."""
        return self.dataset_dir / WORK_FOLDER if self.own else self.dataset_dir

    @property
    def manifest(self) -> Path:
        if self.form == TABLE_FORM:
            return self.work_dir / f"antimetric-manifest-{self.table.stem}.json"
        return self.work_dir / MANIFEST_NAME

    def lock_place(self) -> tuple[Path, str]:
        """(folder, name) of its lock (antimetric.data.manifest.locking), the work folder made if need be: a
        benchmark's beside its folder, as the demo's generation takes it; a user's in the work folder, hidden."""
        if not self.own:
            return self.dataset_dir.parent, self.name
        try:
            self.work_dir.mkdir(exist_ok=True)
        except OSError:
            pass  # the lock's own one-line error names the folder that cannot be written
        return self.work_dir, _OWN_LOCK

    def read(self) -> DatasetIndex:
        """Parse the layout, folder or table (images are not decoded); DatasetLayoutError when it cannot be used.
        A folder's records all come back TRAIN: with_splits draws its test classes."""
        from antimetric.data.readers import read_dataset  # the readers package imports this module

        if self.form == FOLDER:
            from antimetric.data.readers.image_folder import read_image_folder
            return read_image_folder(self.dataset_dir, self.name)
        if self.form == TABLE_FORM:
            from antimetric.data.readers.oml_table import read_oml_table
            return read_oml_table(self.table, self.dataset_dir, self.name,
                                  allow_shared_labels=self.allow_shared_labels)
        return read_dataset(self.name, self.dataset_dir)

    def with_splits(self, index: DatasetIndex) -> DatasetIndex:
        """The index with its test classes: a folder's drawn (--test-classes, --test-split-seed), else as read."""
        if self.form != FOLDER:
            return index
        from antimetric.data.readers.image_folder import split_test_classes
        return split_test_classes(index, self.test_classes, self.test_split_seed)

    def prepare_command(self) -> str:
        """The command that writes this dataset's manifest again."""
        if self.table is not None:
            return f"python -m antimetric prepare --data {self.table} --data-path {self.dataset_dir}"
        if self.own:
            return f"python -m antimetric prepare --data {self.dataset_dir}"
        return f"python -m antimetric prepare --data-path {self.dataset_dir.parent} --data-name {self.name}"


def data_source(data: DataConfig) -> DataSource:
    """Where the data of a data section is and how it is read: a benchmark, or a user's own folder or table."""
    if data.data is None:
        return benchmark(data.data_name, data.data_path if data.data_path is not None else DEFAULT_DATA_PATH)
    return own_data(data.data, data.data_path, test_classes=data.test_classes, test_split_seed=data.test_split_seed,
                    allow_shared_labels=data.allow_shared_labels)


def benchmark(name: str, data_path: Path | str) -> DataSource:
    """A benchmark (or the demo) in its official layout, in the folder `<data_path>/<name>`."""
    return DataSource(name=name, dataset_dir=Path(data_path) / name)


def own_data(path: Path | str, image_root: Path | str | None = None, *, test_classes: float = 0.5,
             test_split_seed: int = 0, allow_shared_labels: bool = False) -> DataSource:
    """A user's own images at `path`: a folder of class subfolders, or a .csv/.parquet table whose paths are
    relative to `image_root` (default: the table's folder). Which one is told by what the path is."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        if image_root is not None and Path(image_root).expanduser().absolute() != path:
            raise ConfigError(f"--data {path} is a folder of class subfolders, whose images are inside it; drop "
                              f"--data-path (it says where a table's paths start)")
        return DataSource(name=path.name, dataset_dir=path, form=FOLDER, test_classes=test_classes,
                          test_split_seed=test_split_seed)
    if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
        root = Path(image_root).expanduser().absolute() if image_root is not None else path.parent
        if not root.is_dir():
            raise ConfigError(f"--data-path {root}: no such folder; it is the folder the paths of {path.name} "
                              "start from (default: the table's folder)")
        return DataSource(name=path.stem, dataset_dir=root, form=TABLE_FORM, table=path,
                          allow_shared_labels=allow_shared_labels)
    if path.suffix.lower() in TABLE_SUFFIXES or path.exists():
        what = "no such file" if not path.exists() else "not a folder, a .csv or a .parquet table"
        raise ConfigError(f"--data {path}: {what}; pass a folder of class subfolders (ROOT/<class>/<image>) or "
                          "a table (.csv, .parquet) with columns label, path, split")
    raise ConfigError(f"--data {path}: no such folder or table; pass a folder of class subfolders "
                      "(ROOT/<class>/<image>) or a table (.csv, .parquet) with columns label, path, split")
