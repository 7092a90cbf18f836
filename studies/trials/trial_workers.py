"""How many workers a trial has, and what each asks of Ray: --gpus-per-trial N above 1 is N workers with a GPU
each, --workers-per-trial N is N workers on CPUs (studies/trials/train_driver.py runs them). Checked before anything starts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antimetric.errors import ConfigError
from studies.trials.trainable import trial_config

TRAIN_RUNS = "train_runs"  # the Train runs of a study's multi-worker trials, in its experiment folder, by trial id
DRIVER_CPU = 0.01  # a trial's driver; Tune refuses a trial of 0 resources


@dataclass(frozen=True)
class TrialWorkers:
    """What a multi-worker trial's driver asks of Ray Train."""
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float  # 0 (gloo on CPUs) or 1 (nccl)
    storage: str  # where the Train runs go: TRAIN_RUNS of the study's experiment folder
    checkpoints: int  # kept per Train run: the most recent ones

    @property
    def resources_per_worker(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}


def trial_workers(workers: int, cpus_per_trial: float, gpus_per_trial: float, experiment_folder: Path,
                  checkpoints: int) -> TrialWorkers:
    """A trial's `workers`: the trial's CPUs but the driver's shared among them, a GPU each when it has GPUs."""
    return TrialWorkers(workers=workers, cpus_per_worker=(cpus_per_trial - DRIVER_CPU) / workers,
                        gpus_per_worker=1.0 if gpus_per_trial > 0 else 0.0,
                        storage=str(experiment_folder / TRAIN_RUNS), checkpoints=checkpoints)


def check_branches_per_worker(workers: int, space: dict[str, dict[str, Any]], constants: dict[str, Any],
                              where: str) -> None:
    """Every worker of a trial gets a branch at least, in the smallest ensemble the space can draw."""
    smallest = smallest_ensemble(space, constants)
    if workers > smallest:
        drawn = f"{where} draws" if "ensemble_size" in space else "--ensemble-size gives"
        raise ConfigError(f"--workers-per-trial {workers}: a trial's branches are split among its workers, and {drawn} "
                          f"ensembles of {smallest} branches; pass at most {smallest} workers or larger ensembles")


def smallest_ensemble(space: dict[str, dict[str, Any]], constants: dict[str, Any]) -> int:
    """The fewest branches a trial of the space can have."""
    spec = space.get("ensemble_size")
    if spec is None:
        return trial_config(constants).model.ensemble_size
    return int(min(spec["values"]) if spec["type"] == "choice" else spec["low"])


def workers_and_gpus(values: dict[str, Any], given: dict[str, Any], saved: dict[str, Any] | None) -> tuple[int, float]:
    """(workers per trial, GPUs per trial): --gpus-per-trial N above 1 is N workers with a GPU each;
    --workers-per-trial N alone is N workers on CPUs. A resumed study keeps its trials' workers."""
    gpus, workers = values["gpus_per_trial"], values.get("workers_per_trial", 1)
    if gpus > 1:
        if gpus != int(gpus):
            raise ConfigError(f"--gpus-per-trial {gpus:g}: above 1 it is the trial's workers, a GPU each; pass a whole "
                              "number")
        if given.get("workers_per_trial", int(gpus)) != int(gpus):
            raise ConfigError(f"--workers-per-trial {workers} with --gpus-per-trial {gpus:g}: a trial's workers have a "
                              "GPU each; pass one of the two")
        workers = int(gpus)
    elif workers > 1 and gpus > 0:
        if "gpus_per_trial" in given:
            raise ConfigError(f"--gpus-per-trial {gpus:g} with --workers-per-trial {workers}: each worker of a trial "
                              f"has a whole GPU; pass --gpus-per-trial {workers}, or 0 to train on CPUs")
        gpus = 0.0  # the default GPU of a CUDA machine: --workers-per-trial trains on CPUs
    if saved is not None and workers != saved["workers_per_trial"]:
        raise ConfigError(f"--resume: this study's trials have {saved['workers_per_trial']} workers each, not {workers} "
                          "(--gpus-per-trial above 1 is the trial's workers); drop the option or start a new --experiment")
    return workers, gpus
