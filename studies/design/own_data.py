"""A study of a user's own images: `python -m studies.search PATH`, PATH a folder of class subfolders or a table in
open-metric-learning's columns (antimetric.data.readers.source), where a benchmark's study names its dataset.

The study's defaults are CUB's (the seed's ResNet-18), or the demo's with `--backbone tiny`; its meta-class sizes
are bounded by the training classes the data has. What the data decides of a trial's config (Recall@K that fits
the gallery, the normalisation) is measured once, when the study starts, and kept with the training options the
study fixes, so that every trial, the confirmation stage and a --resume use the same values.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from antimetric.data.readers.source import data_source
from antimetric.data.settings import DATASETS
from antimetric.data.table import OWN_DATA_TRAINING, OWN_DATA_TRAINING_BY_BACKBONE
from antimetric.training.config import RunConfig, resolve
from studies.design.settings import TRIAL_DEFAULTS
from studies.design.spaces import SPACES, Space, space_of
from studies.design.study_defaults import OWN_DATA_STUDY, OWN_DATA_STUDY_BY_BACKBONE, StudyDefaults

MEASURED = ("recalls", "mean", "std")  # what a trial's config takes from the data, measured once per study


def is_own_data(name: str) -> bool:
    """NAME is a path to the user's images rather than a built-in dataset's name."""
    return name not in DATASETS


def dataset_label(name: str) -> str:
    """What a study of NAME is called by default (`<label>-study`): a folder's name, a table's stem."""
    return Path(name).stem if is_own_data(name) else name


def own_study_defaults(backbone: str | None) -> StudyDefaults:
    return OWN_DATA_STUDY_BY_BACKBONE.get(backbone or OWN_DATA_TRAINING.backbone, OWN_DATA_STUDY)


def own_study_values(backbone: str | None) -> dict[str, Any]:
    """The study options' defaults for a user's data (as STUDY_DEFAULTS holds a benchmark's)."""
    study = own_study_defaults(backbone)
    training = OWN_DATA_TRAINING_BY_BACKBONE.get(backbone or OWN_DATA_TRAINING.backbone, OWN_DATA_TRAINING)
    return dict(num_samples=study.num_samples, max_epochs=study.max_epochs or training.num_epochs,
                max_concurrent=study.max_concurrent, cpus_per_trial=study.cpus_per_trial)


def dataset_constants(name: str, data_path: str | Path) -> dict[str, Any]:
    """The config keys that say which data every trial of a study of NAME trains on."""
    if is_own_data(name):
        return {"data": name, "data_path": str(data_path)}
    return {"data_name": name, "data_path": str(data_path)}


def image_root(name: str, data_path: str | None) -> str:
    """Where the images of a user's folder or table are (checked: a one-line error for a path that is neither)."""
    return str(data_source(RunConfig.from_flat({"data": name, "data_path": data_path}).data).dataset_dir)


def measured_defaults(constants: dict[str, Any]) -> dict[str, Any]:
    """The values of MEASURED a trial of these constants resolves to, reading the data once (its manifest made
    first where there is none)."""
    resolved = resolve(RunConfig.from_flat(constants), progress=sys.stderr.isatty()).to_flat()
    return {key: resolved[key] for key in MEASURED}


def own_space(backbone: str | None, n_classes: int | None = None) -> Space:
    """The built-in space for a user's data; with n_classes, its meta-class range within the training classes."""
    space = space_of(own_study_defaults(backbone))
    if n_classes is not None:
        meta = space["meta_class_size"]
        meta["high"] = max(2, min(meta["high"], n_classes))
        meta["low"] = min(meta["low"], meta["high"])
    return space


def printed_space(name: str, backbone: str | None, data_path: str | None) -> Space:
    """What --print-space shows: a benchmark's built-in space, or for a user's data its space with the meta-class
    range bounded by the training classes a trial has (the validation classes held out), and on stderr what the
    data gives each trial's config."""
    if not is_own_data(name):
        return SPACES[name]()
    from antimetric.data.manifest.prepare import load_or_prepare
    from antimetric.data.readers.own_defaults import training_classes

    path = str(Path(name).expanduser().absolute())
    constants = {**dataset_constants(path, image_root(path, data_path)), **TRIAL_DEFAULTS, "backbone": backbone}
    measured = measured_defaults(constants)  # prepares the data's manifest if need be, then reads it back here
    config = RunConfig.from_flat(constants).data
    index = load_or_prepare(data_source(config), progress=False)
    n_classes = training_classes(index, config.val_fraction, config.max_per_class, 0, None)
    shown = ", ".join(f"{key} {','.join(f'{v:g}' for v in value)}" for key, value in measured.items())
    print(f"{dataset_label(name)}: {n_classes} training classes (validation classes held out); from the data: {shown}",
          file=sys.stderr)
    return own_space(backbone, n_classes)
