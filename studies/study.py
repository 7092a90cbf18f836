"""Running a study: Ray Tune with OptunaSearch (TPE) and ASHA, MLflow callback, summary at the end."""
from __future__ import annotations

import json
import pickletools
import sys
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from studies.report import summarize
from studies.search import StudySettings, count_training_classes, trial_constants
from studies.spaces import SPACES, SpaceSampler
from studies.tracking import MLflowTrialCallback, ensure_experiment
from studies.trainable import EPOCH, OBJECTIVE, train_ensemble, trial_config

# Checkpoints kept per trial: the two most recent. Each holds the training state to resume from
# and the best epoch's weights so far (train_ensemble), so no older one is needed. Kept by recency,
# not by score: ranking by the objective could delete the checkpoint that the driver's last saved
# experiment state names as the one to resume from, and a study killed at that moment could not
# resume that trial ("checkpoint does not exist on storage anymore"). A ResNet18 x 48 checkpoint
# with its Adam state is several GB.
CHECKPOINTS_PER_TRIAL = 2


def trainable(settings: StudySettings):
    """The trainable with each trial's CPUs and (possibly fractional) GPUs."""
    return tune.with_resources(train_ensemble, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def build_tuner(settings: StudySettings, experiment_id: str, n_classes: int) -> tune.Tuner:
    constants = trial_constants(settings)
    space = SPACES[settings.name]()
    searcher = OptunaSearch(
        space=SpaceSampler(space, n_classes, trial_config(constants).to_flat()),
        metric=OBJECTIVE,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=max(2, min(10, settings.num_samples // 2))),
    )
    scheduler = ASHAScheduler(time_attr=EPOCH, metric=OBJECTIVE, mode="max", max_t=settings.max_epochs,
                              grace_period=max(1, settings.max_epochs // 5), reduction_factor=3)
    return tune.Tuner(
        trainable(settings),
        param_space=constants,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, settings.max_concurrent),
                                    scheduler=scheduler, num_samples=settings.num_samples, reuse_actors=True),
        run_config=tune.RunConfig(
            name=settings.experiment,
            storage_path=str(settings.storage_path),
            callbacks=[MLflowTrialCallback(settings.tracking_uri, experiment_id, settings.experiment)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_PER_TRIAL),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def run_study(settings: StudySettings) -> int:
    n_classes = count_training_classes(settings)
    experiment_id = ensure_experiment(settings.tracking_uri, settings.experiment, _artifact_root(settings))
    experiment_path = settings.storage_path / settings.experiment
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        if settings.resume:
            if not tune.Tuner.can_restore(str(experiment_path)):
                print(f"error: --resume: no study to resume in {experiment_path}; drop --resume to start one",
                      file=sys.stderr)
                return 2
            cut_short = cut_short_state_file(experiment_path)
            if cut_short is not None:
                print(f"error: --resume: {cut_short} was cut short when the study's driver was killed (Ray copies "
                      "its state files without an atomic rename), so Tune would silently start the study over; "
                      "start a new one with --experiment NEW_NAME", file=sys.stderr)
                return 2
            tuner = tune.Tuner.restore(str(experiment_path), trainable(settings), resume_unfinished=True,
                                       resume_errored=False)
        elif tune.Tuner.can_restore(str(experiment_path)):
            print(f"error: a study named {settings.experiment} exists in {experiment_path}; pass --resume to continue "
                  "it or --experiment NEW_NAME to start another", file=sys.stderr)
            return 2
        else:
            tuner = build_tuner(settings, experiment_id, n_classes)
        results = tuner.fit()
        if results.num_terminated + results.num_errors < len(results):
            print(f"study interrupted; continue it with: python -m studies.search {settings.name} "
                  f"--experiment {settings.experiment} --resume", file=sys.stderr)
            return 130
        summarize(settings, results, experiment_id, n_classes)
        return 0
    finally:
        ray.shutdown()


def cut_short_state_file(experiment_path: Path) -> Path | None:
    """The newest searcher or experiment state Tune would restore, when a killed driver left it truncated.

    Ray writes these files in a staging folder and copies them into the experiment folder file by file;
    a driver killed during a copy leaves a partial file there (seen: an empty searcher state, after
    which Tune logged "Failed to restore the run state" and restarted the whole study). The check parses
    the files' structure only: pickle opcodes are listed without building any object."""
    searcher_states = sorted(experiment_path.glob("searcher-state-*.pkl"))
    if searcher_states:  # Tune restores max() of these names
        try:
            with searcher_states[-1].open("rb") as handle:
                for _ in pickletools.genops(handle):
                    pass
        except (ValueError, OSError):
            return searcher_states[-1]
    experiment_states = sorted(experiment_path.glob("experiment_state-*.json"))
    if experiment_states:
        try:
            json.loads(experiment_states[-1].read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return experiment_states[-1]
    return None


def _artifact_root(settings: StudySettings) -> Path | None:
    """Local SQLite stores keep artifacts beside the database; servers choose their own."""
    if settings.tracking_uri.startswith("sqlite:///"):
        return Path(settings.tracking_uri[len("sqlite:///"):]).parent
    return None
