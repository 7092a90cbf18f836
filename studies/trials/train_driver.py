"""A trial on several workers (--gpus-per-trial N > 1, or --workers-per-trial N on CPUs): the Tune trial is a
small driver that builds and fits a Ray Train TorchTrainer with N workers, which train the trial's ensemble
branch-parallel (antimetric.training.loop.fit in a torch.distributed group that Ray Train sets up).

ray 2.60.0 has Train V2 on by default; its way to run Train inside Tune (the "Hyperparameter Tuning with Ray Tune"
user guide): the driver's RunConfig names the Train run by the trial id on the study's storage, so a resumed
trial's driver finds the run's checkpoints again (every worker's ray.train.get_checkpoint()); TuneReportCallback
hands rank 0's metrics of every ray.train.report to Tune, with the path of the checkpoint (Tune's own checkpoint of
the trial stays None: trial_weights.ended_checkpoint reads that path). The driver takes DRIVER_CPU of a CPU and
no GPU, so that a trial's driver never waits for the GPUs its workers hold; the workers take the trial's CPUs
and one GPU each (see /work/notes/spike_v2.md for the measurements on a 2-core machine).

When a scheduler stops such a trial, Tune kills its driver, with it the Train controller and the workers, but
not the workers' placement group: Ray's PlacementGroupCleaner would remove it, but it asks the State API, which a
Ray started without its dashboard (start_ray) does not serve, so the next trial's workers would wait for ever
(ray#54305, still so in 2.60.0 without the dashboard). ReleaseTrainGroups removes it when the trial ends: rank 0
reports its id (TRAIN_GROUP) every epoch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray import tune
from ray.train.torch import TorchTrainer, get_device

from antimetric.base.atomic import write_json
from studies.compat import (
    TRAIN_CHECKPOINT_PATH,
    TuneReportCallback,
    current_placement_group_id,
    remove_placement_group_by_id,
)
from studies.trials.trainable import EPOCH, REPORTED_AGAIN, WORLD_SIZE, train_trial, trial_config
from studies.trials.trial_workers import DRIVER_CPU, TrialWorkers

TRAIN_GROUP = "train_placement_group"  # reported by rank 0: the hex id of its workers' placement group
REPORTED_FILE = "reported.json"  # an epoch's reported metrics, in its checkpoint


def multi_worker_trainable(workers: TrialWorkers):
    """The Tune trainable of a multi-worker study: train_driver with its workers, on DRIVER_CPU."""
    return tune.with_resources(tune.with_parameters(train_driver, workers=workers), {"cpu": DRIVER_CPU})


def train_driver(config: dict[str, Any], workers: TrialWorkers) -> None:
    """A Tune trial: fit a TorchTrainer of `workers` on the trial's config. A config the core refuses fails the
    trial here, before any worker starts. Raises ray.train.TrainingFailedError when a worker failed."""
    trial_config(config)
    context = tune.get_context()
    trainer = TorchTrainer(
        train_worker, train_loop_config={"config": config, "trial_name": context.get_trial_name()},
        scaling_config=ray.train.ScalingConfig(num_workers=workers.workers, use_gpu=workers.gpus_per_worker > 0,
                                               resources_per_worker=workers.resources_per_worker),
        run_config=ray.train.RunConfig(
            name=context.get_trial_id(),  # stable across restores: the rerun driver finds the run's checkpoints
            storage_path=workers.storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=workers.checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=0),
            callbacks=[TuneReportCallback()],  # built here: it needs the trial's Tune session
        ))
    trainer.fit()


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker of a trial: what train_ensemble does, reporting with ray.train.report on every rank
    (a barrier: each rank reports every epoch). Every rank writes its part of the checkpoint (the core gathers the
    branches; rank 0 writes state.pt); rank 0's folder is the checkpoint, with the best epoch's files and the
    epoch's metrics (REPORTED_FILE).

    A resumed trial first reports its checkpoint's epoch again: Ray Train registers a checkpoint before Tune takes
    its metrics, so a study stopped in between resumes from an epoch that Tune (ASHA, MLflow, Optuna) never saw.
    Tune's callbacks take an epoch they saw again as a one-device trial's repeated epoch."""
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    device = get_device()  # Ray shows the node's GPUs to each worker: its own is not always the local rank's
    if device.type == "cuda":
        torch.cuda.set_device(device)
    group = current_placement_group_id()
    own = {WORLD_SIZE: str(size), **({TRAIN_GROUP: group} if group and rank == 0 else {})}

    def report(metrics: dict[str, Any], folder: Path) -> None:
        if rank == 0:
            write_json(folder / REPORTED_FILE, metrics)
        ray.train.report({**metrics, **own}, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None,
                         checkpoint_dir_name=f"checkpoint_{int(metrics[EPOCH]):06d}")

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = Path(folder) / REPORTED_FILE  # every rank has a copy: all report again, or none
            metrics = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else None
        if metrics is not None:
            ray.train.report({**metrics, **own, TRAIN_CHECKPOINT_PATH: checkpoint.path, REPORTED_AGAIN: True})
    train_trial(loop_config["config"], loop_config["trial_name"], checkpoint, report, keep_best=rank == 0)


class ReleaseTrainGroups(tune.Callback):
    """Removes the placement group of an ended trial's Train workers (see the module's docstring). One already
    removed (a Train run that ended by itself) is left alone."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    @staticmethod
    def _release(trial) -> None:
        group = (trial.last_result or {}).get(TRAIN_GROUP)
        if group:
            remove_placement_group_by_id(group)
