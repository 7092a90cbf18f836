"""A study's settings: the per-dataset defaults, the config every trial shares, and the settings
file a study keeps beside Ray's state so that --resume continues it with the same options."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from antimetric.base.atomic import write_json
from antimetric.data.table import TABLE
from antimetric.errors import ConfigError
from studies.design.study_defaults import DATASET_STUDY_DEFAULTS

# The confirmation stage's defaults: the 3 best configurations and the default one, 3 runs each.
CONFIRM_DEFAULTS = {"confirm_top": 3, "repeats": 3}


@dataclass
class StudySettings:
    name: str  # dataset
    data_path: Path  # absolute
    num_samples: int
    max_epochs: int
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    address: str | None
    tracking_uri: str
    experiment: str
    storage_path: Path  # absolute; Ray's experiment folders
    resume: bool
    seed: int
    fixed: dict[str, Any]  # config values shared by every trial (beside the searched ones)
    space: dict[str, dict[str, Any]]  # what is searched: the built-in or --space file, without the fixed keys
    objective: str = "recall"  # OBJECTIVES: validation Recall@1 alone, or against `cost` (studies/conclusions/pareto.py)
    cost: str = "embedding_dims"  # PARETO_COSTS: what a Pareto study minimises
    confirm_top: int = CONFIRM_DEFAULTS["confirm_top"]  # best configurations trained again after the search (0: no confirmation stage)
    repeats: int = CONFIRM_DEFAULTS["repeats"]  # runs of each confirmed configuration and of the default one
    workers_per_trial: int = 1  # above 1: each trial a Ray Train run of that many workers (studies/trials/train_driver.py)

    @property
    def experiment_path(self) -> Path:
        return self.storage_path / self.experiment

    @property
    def pareto_cost(self) -> str | None:
        """The cost a Pareto study minimises; None for a study of Recall@1 alone."""
        return self.cost if self.objective == "pareto" else None


# Per dataset, from its study defaults: trials, epochs (by default the dataset's --num-epochs, from its row of
# the dataset table), concurrent trials, CPUs per trial (a GPU per trial where there is one). A study on this machine asks for no more CPUs per trial
# than it has (antimetric.base.cpus.available_cpus), and runs as many trials at once as its CPUs and GPUs hold;
# max_concurrent is for a cluster (--address).
STUDY_DEFAULTS: dict[str, dict[str, Any]] = {
    name: dict(num_samples=study.num_samples, max_epochs=study.max_epochs or TABLE[name].training.num_epochs,
               max_concurrent=study.max_concurrent, cpus_per_trial=study.cpus_per_trial)
    for name, study in DATASET_STUDY_DEFAULTS.items()
}
# Study defaults over the core's: a validation split to select on, quiet loaders inside trials.
TRIAL_DEFAULTS: dict[str, Any] = {"val_fraction": 0.2, "num_workers": 0}
# --smoke-test: seconds, not minutes: few trials on small, low-resolution data.
SMOKE = dict(num_samples=3, max_epochs=2, fixed=dict(image_size=32, max_per_class=8))

# What a study keeps for good, by the option that sets it. Tune restores its searcher, scheduler,
# trial configs and MLflow callback from its own state on --resume and would silently keep the
# old value, so --resume refuses another one; an option left out takes the saved value.
KEPT = {"name": "the dataset", "data_path": "--data-path", "num_samples": "--num-samples",
        "max_epochs": "--max-epochs", "max_concurrent": "--max-concurrent", "seed": "--seed",
        "fixed": "a training option", "space": "--space", "tracking_uri": "--tracking-uri",
        "objective": "--objective", "cost": "--cost", "confirm_top": "--confirm-top", "repeats": "--repeats",
        "workers_per_trial": "--workers-per-trial"}
# (--workers-per-trial is kept: a multi-worker trial's checkpoints are in its Ray Train run, a one-device trial's in
# Tune's trial folder, so a resume with another number could not continue the unfinished trials.)
# What a settings file written before an option existed holds for it: such a study had no confirmation stage.
SAVED_BEFORE = {"confirm_top": 0, "repeats": 3}
# Saved too, but --resume applies a new value (Tune asks for each trial's resources anew).
# --address is never saved: it says where Ray runs now.
APPLIED = ("cpus_per_trial", "gpus_per_trial")
SETTINGS_FILE = "antimetric-study.json"
OBJECTIVES = ("recall", "pareto")  # --objective
PARETO_COSTS = ("embedding_dims", "gflops_per_image")  # --cost: an ensemble's cost per image (antimetric/model/cost.py)


def default_experiment(dataset: str) -> str:
    """The MLflow experiment (and Ray folder) of a dataset's studies without --experiment; `antimetric train
    --tracking-uri` records its runs there too, beside the trials."""
    return f"{dataset}-study"


def save_settings(settings: StudySettings) -> None:
    values = {key: value for key, value in asdict(settings).items() if key in KEPT or key in APPLIED}
    values["data_path"] = str(settings.data_path)
    write_json(settings.experiment_path / SETTINGS_FILE, values)


def saved_settings(experiment_path: Path) -> dict[str, Any] | None:
    """The settings a study was started with; None for a study without a settings file."""
    path = experiment_path / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        # a file from before a field: the field's default, or what such a study did (SAVED_BEFORE)
        values = {**_FIELD_DEFAULTS, **SAVED_BEFORE, **json.loads(path.read_text(encoding="utf-8"))}
        return {key: values[key] for key in (*KEPT, *APPLIED)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--resume: cannot read {path} ({exc}); start a new study with --experiment NEW_NAME") \
            from None


_FIELD_DEFAULTS = {f.name: f.default for f in fields(StudySettings) if f.default is not MISSING}


def trial_constants(settings: StudySettings) -> dict[str, Any]:
    """The config every trial shares; the searched keys are added per trial."""
    from studies.design.own_data import dataset_constants  # it builds on this module's neighbours

    return {**dataset_constants(settings.name, settings.data_path), "num_epochs": settings.max_epochs,
            "seed": settings.seed, **settings.fixed}
