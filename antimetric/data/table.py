"""The datasets antimetric knows, one row each: everything else about a dataset is read from here.

The data's settings (the dataset names; which have boxes), the run config and its --help (a dataset's defaults),
the readers (a row's reader module), `evaluate` (another dataset's Recall@K) and the studies (their trials'
epochs) read a row where they need it, rather than keeping its facts under other names; a study's own defaults
(trials, resources, search ranges) are in studies/design/study_defaults.py.
Adding a dataset is one reader module in antimetric/data/readers/ and one row below.

This module imports nothing but the standard library: the config imports it, and a row names its
reader module rather than importing it (reading CARS needs scipy, which takes a second to import).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class TrainingDefaults:
    """What a run of the dataset takes for the config fields left as None; the names are config fields."""

    backbone: str
    ensemble_size: int
    meta_class_size: int
    num_epochs: int  # also a study trial's epochs (--max-epochs)
    image_size: int
    pretrained: bool
    with_fc: bool
    lr: float


@dataclass(frozen=True)
class DatasetRow:
    name: str  # the --data-name and the dataset's folder under --data-path
    reader: str  # its reader: the module antimetric/data/readers/<reader>.py, which exports READER
    mean: RGB  # channel statistics for the input normalisation
    std: RGB
    has_boxes: bool  # its reader gives bounding boxes, which --crop-type cropped needs
    recalls: tuple[int, ...]  # the Recall@K values it reports by default
    training: TrainingDefaults

    def defaults(self) -> dict[str, Any]:
        """The config values this dataset gives the fields left as None."""
        return {**asdict(self.training), "recalls": self.recalls, "mean": self.mean, "std": self.std}


def _seed_resnet(meta_class_size: int, num_epochs: int) -> TrainingDefaults:
    """The seed's settings (its README's benchmark section): 48 branches of an ImageNet ResNet-18."""
    return TrainingDefaults(backbone="resnet18", ensemble_size=48, meta_class_size=meta_class_size,
                            num_epochs=num_epochs, image_size=256, pretrained=True, with_fc=False, lr=1e-4)


_ROWS = (
    # Generated on first use (antimetric.data.demo) as class folders and a table; CPU-sized: the tiny backbone
    # on 64 px glyph images. Its mean/std were measured on the generated images.
    DatasetRow(
        name="demo", reader="oml_table", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), has_boxes=True,
        recalls=(1, 2, 4, 8),
        training=TrainingDefaults(backbone="tiny", ensemble_size=12, meta_class_size=6, num_epochs=10,
                                  image_size=64, pretrained=False, with_fc=True, lr=2e-3),
    ),
    # The seed's channel statistics from here on.
    DatasetRow(
        name="cub", reader="cub", mean=(0.4707, 0.4601, 0.4549), std=(0.2767, 0.2760, 0.2850), has_boxes=True,
        recalls=(1, 2, 4, 8), training=_seed_resnet(meta_class_size=12, num_epochs=20),
    ),
    DatasetRow(
        name="car", reader="cars", mean=(0.4853, 0.4965, 0.4295), std=(0.2237, 0.2193, 0.2568), has_boxes=True,
        recalls=(1, 2, 4, 8), training=_seed_resnet(meta_class_size=12, num_epochs=20),
    ),
    DatasetRow(
        name="sop", reader="sop", mean=(0.5807, 0.5396, 0.5044), std=(0.2901, 0.2974, 0.3095), has_boxes=False,
        recalls=(1, 10, 100, 1000), training=_seed_resnet(meta_class_size=512, num_epochs=40),
    ),
    DatasetRow(
        name="isc", reader="inshop", mean=(0.8324, 0.8109, 0.8041), std=(0.2206, 0.2378, 0.2444), has_boxes=False,
        recalls=(1, 10, 20, 30, 40, 50), training=_seed_resnet(meta_class_size=192, num_epochs=40),
    ),
)
TABLE: dict[str, DatasetRow] = {row.name: row for row in _ROWS}

# A user's own images (--data): the seed's ResNet-18 settings, or the demo's with the tiny backbone (a CPU-sized
# run). The rest is measured on the data (antimetric.data.readers.own_defaults): the meta-class size bounded by
# the training classes, Recall@K fitting the gallery, the normalisation (ImageNet's for pretrained weights).
OWN_DATA_TRAINING = _seed_resnet(meta_class_size=12, num_epochs=20)
OWN_DATA_TRAINING_BY_BACKBONE = {"tiny": TABLE["demo"].training}
IMAGENET_MEAN_STD: tuple[RGB, RGB] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's weights
