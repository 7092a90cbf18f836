"""Each dataset's study defaults: how many trials, on what resources, over which ranges of the built-in space.

Keyed by the dataset's name in the dataset table (antimetric.data.table), which holds what a dataset is; a
study's epochs default to the table's training epochs. studies.design.spaces builds the spaces from these ranges and
studies.design.settings the option defaults; tests/studies/design/test_spaces.py checks every dataset of the table has a row.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyDefaults:
    """A study's defaults: its size and resources, and the ranges its built-in search space covers.

    Each searched range becomes one entry of the space (studies.design.spaces), in the config's own units.
    """

    num_samples: int  # trials
    meta_class_sizes: tuple[int, int]  # log-uniform int range, narrowed per trial to the valid sizes
    max_epochs: int | None = None  # each trial's epochs (None: the dataset's training default num_epochs)
    max_concurrent: int = 1  # trials at once on a cluster (--address); a local study fits its CPUs and GPUs
    cpus_per_trial: int = 8  # at most what the machine has; a GPU per trial where there is one
    ensemble_sizes: tuple[int, ...] = (12, 24, 48)
    share_types: tuple[str, ...] = ("maxpool", "layer1", "layer2", "layer3")
    lr: tuple[float, float] = (3e-5, 3e-4)  # log-uniform


DATASET_STUDY_DEFAULTS: dict[str, StudyDefaults] = {
    # 8 trials of 5 epochs, up to 12 branches: search and confirmation (12 runs) in < 4 minutes on 2 cores
    "demo": StudyDefaults(num_samples=8, max_epochs=5, meta_class_sizes=(2, 12), max_concurrent=2, cpus_per_trial=1,
                          ensemble_sizes=(4, 8, 12), share_types=("layer1", "layer2", "layer3"), lr=(3e-4, 5e-3)),
    "cub": StudyDefaults(num_samples=24, meta_class_sizes=(4, 48)),
    "car": StudyDefaults(num_samples=24, meta_class_sizes=(4, 48)),
    "sop": StudyDefaults(num_samples=16, meta_class_sizes=(64, 1024)),
    "isc": StudyDefaults(num_samples=16, meta_class_sizes=(32, 512)),
}

# A user's own images (studies/design/own_data.py): CUB's study of the seed's ResNet-18, its meta-class sizes from 2
# (the sampler narrows them to the training classes); with --backbone tiny, the demo's CPU-sized study.
OWN_DATA_STUDY = StudyDefaults(num_samples=24, meta_class_sizes=(2, 48))
OWN_DATA_STUDY_BY_BACKBONE = {"tiny": DATASET_STUDY_DEFAULTS["demo"]}
