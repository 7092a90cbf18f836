"""The data's names and its section of the run config: which datasets and crop types exist (from the dataset
table), and the rules a data setting must meet.

This module imports no torch: every command imports it to build its options.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from antimetric.base.fields import check_at_least, check_at_most, option
from antimetric.data.table import RGB, TABLE
from antimetric.errors import ConfigError

DATASETS = tuple(TABLE)
CROP_TYPES = ("uncropped", "cropped")
MAX_IMAGE_SIZE = 4096  # 16x the seed's 256 px: a value no one means, refused at once
DEFAULT_DATA_PATH = "data"


def _with_boxes() -> str:
    """The datasets whose rows have bounding boxes, which crop_type 'cropped' needs."""
    return ", ".join(name for name, row in TABLE.items() if row.has_boxes)


def parse_rgb(value: str | tuple | list) -> RGB:
    """Three numbers, one per channel: '0.485,0.456,0.406' or a list of three."""
    try:
        channels = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        channels = ()
    if len(channels) != 3 or not all(math.isfinite(v) for v in channels):
        raise ConfigError(f"expected three comma-separated numbers (R,G,B) such as 0.485,0.456,0.406, got {value!r}")
    return channels


@dataclass
class DataConfig:
    data_name: str = option("demo", "dataset (demo is generated on first use)", choices=DATASETS)
    data: str | None = option(None, "your own images instead of --data-name: a folder of class subfolders "
                                    "(ROOT/<class>/<image>) or a table (.csv, .parquet) with open-metric-learning's "
                                    "columns label, path, split", metavar="PATH")
    data_path: str | None = option(None, f"parent folder of the dataset folders {', '.join(n + '/' for n in DATASETS)} "
                                         f"(default: {DEFAULT_DATA_PATH}); with a --data table: the folder its paths "
                                         "start from (default: the table's folder)")
    test_classes: float = option(0.5, "with a --data folder: fraction of its classes held out for testing, never "
                                      "trained on (as CUB and CARS halve theirs)", parse=float, metavar="FRACTION")
    test_split_seed: int = option(0, "with a --data folder: seed of the draw of its test classes (the same for every "
                                     "--seed, so that runs compare on the same test classes)", parse=int)
    allow_shared_labels: bool = option(False, "with a --data table: accept labels in both train and test rows (the "
                                              "test classes are then not unseen; recorded in the run's config)")
    crop_type: str = option("uncropped", f"cropped uses the bounding boxes ({_with_boxes()}, or a "
                                         "--data table with columns x_1, x_2, y_1, y_2)", choices=CROP_TYPES)
    mean: RGB | None = option(None, "channel means of the input normalisation (default: the dataset's; your own "
                                    "data: ImageNet's with a pretrained backbone, else measured on its training images)",
                              parse=parse_rgb, metavar="R,G,B")
    std: RGB | None = option(None, "channel standard deviations of the input normalisation (default: as --mean)",
                             parse=parse_rgb, metavar="R,G,B")
    image_size: int | None = option(None, "side of the square network input in pixels", parse=int)
    val_fraction: float = option(0.0, "fraction of the training classes held out to select the best epoch",
                                 parse=float)
    max_per_class: int = option(300, "training images kept per class (the seed's cap)", parse=int)
    val_fold: int | None = option(None, "hold out class-disjoint fold R of the training classes (folds of "
                                        "--val-fraction each) instead of one seeded draw", parse=int, metavar="R")
    split_seed: int | None = option(None, "seed of the validation split and its folds (default: --seed)", parse=int)
    num_workers: int | None = option(None, "data-loader processes (default: none on <= 2 cores, else up to 8)",
                                     parse=int)
    image_cache: bool = option(True, "read the resized images of `prepare --cache-size` when they match")
    image_memory: int | None = option(None, "MiB of resized images kept decoded in memory after their first "
                                            "epoch (default: 1024 when loading in the main process, else 0)",
                                      parse=int, metavar="MIB")

    def check(self) -> None:
        """The rules of a resolved data section (every None default filled in)."""
        if self.data is None:
            check_dataset(self.data_name)
            check_crop_type(self.data_name, self.crop_type)
        elif self.crop_type not in CROP_TYPES:
            check_crop_type(self.data_name, self.crop_type)
        if not 0.0 < self.test_classes < 1.0:
            raise ConfigError(f"--test-classes must be a fraction between 0 and 1 (e.g. 0.5), got {self.test_classes}")
        if self.test_split_seed < 0:
            raise ConfigError(f"--test-split-seed must be 0 or more, got {self.test_split_seed}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"--std must be positive numbers, got {','.join(f'{v:g}' for v in self.std)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        check_at_least({"image_size": self.image_size, "max_per_class": self.max_per_class}, 1)
        check_at_most({"image_size": (self.image_size, MAX_IMAGE_SIZE)})
        for name, value in (("split_seed", self.split_seed), ("val_fold", self.val_fold)):
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
        if self.val_fold is not None and not self.val_fraction:
            raise ConfigError("--val-fold holds out a fold of --val-fraction of the training classes; "
                              "give --val-fraction above 0")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"--num-workers must be 0 or more (0: load in the main process), got {self.num_workers}")
        if self.image_memory is not None and self.image_memory < 0:
            raise ConfigError(f"--image-memory must be 0 or more MiB (0: decode every epoch), got {self.image_memory}")
        if self.image_memory and self.num_workers:
            raise ConfigError(f"--image-memory keeps images in the process that loads them, and the {self.num_workers} "
                              "--num-workers processes restart every epoch; add --num-workers 0 or drop --image-memory")


def check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def check_crop_type(data_name: str, crop_type: str) -> None:
    """A known crop type, and `cropped` only for a dataset with bounding boxes."""
    if crop_type not in CROP_TYPES:
        raise ConfigError(f"unknown crop type {crop_type!r}; choose one of {', '.join(CROP_TYPES)}")
    if crop_type == "cropped" and not (data_name in TABLE and TABLE[data_name].has_boxes):
        raise ConfigError(f"--crop-type cropped needs bounding boxes, which {data_name} does not have "
                          f"(only {_with_boxes()} do); drop --crop-type")
