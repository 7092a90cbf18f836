"""Running a study: Ray Tune with OptunaSearch (TPE) and ASHA, its MLflow parent run and callback, summary at the end."""
from __future__ import annotations

import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import optuna
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from antimetric.data.loading import load_index
from antimetric.data.splits import make_splits
from antimetric.errors import ConfigError
from studies.compat import RAY_STAGING_FOLDER, keep_ray_on_localhost
from studies.conclusions.pareto import pareto_scheduler, search_objectives
from studies.conclusions.report import summarize
from studies.design.own_data import dataset_label
from studies.design.settings import SETTINGS_FILE, StudySettings, save_settings, trial_constants
from studies.design.spaces import SpaceSampler
from studies.lifecycle.checks import (
    STORE_ERRORS,
    check_nodes,
    check_optuna_storage,
    check_resources,
    check_storage,
    open_experiment,
    store_failure,
)
from studies.lifecycle.confirm_stage import confirm_path, confirm_tuner, ranked_configurations, report_confirmation
from studies.lifecycle.console import StudyReporter, parameter_columns, quiet_console, trial_dirname, trial_name
from studies.lifecycle.state_files import KEPT_FOLDER, StateKeeper, cut_short_state_files, restore_kept_state
from studies.lifecycle.study_end import (
    StudyFailed,
    StudyInterrupted,
    check_some_trial_succeeded,
    fit_until_interrupted,
    sigterm_as_ctrl_c,
    stop_runs,
)
from studies.lifecycle.study_lock import study_lock
from studies.record.optuna_live import record_callback
from studies.record.optuna_record import quiet_optuna
from studies.record.study_run import open_study_run
from studies.record.tracking import MLflowTrialCallback, local_artifact_root
from studies.trials.resumable_asha import ResumableASHA
from studies.trials.train_driver import ReleaseTrainGroups, multi_worker_trainable
from studies.trials.trainable import EPOCH, OBJECTIVE, SCRATCH, train_ensemble, trial_config
from studies.trials.trial_workers import trial_workers

# Checkpoints kept per trial: the two most recent. Each holds the training state to resume from
# and the best epoch's weights so far (train_ensemble), so no older one is needed. Kept by recency,
# not by score: ranking by the objective could delete the checkpoint that the driver's last saved
# experiment state names as the one to resume from, and a study killed at that moment could not
# resume that trial ("checkpoint does not exist on storage anymore"). A ResNet18 x 48 checkpoint
# with its Adam state is several GB; an ended trial's are deleted once its best weights are in MLflow
# (record/trial_weights.py), so a study keeps checkpoints of its unfinished trials only.
CHECKPOINTS_PER_TRIAL = 2


def trainable(settings: StudySettings):
    """The trainable with each trial's CPUs and (possibly fractional) GPUs; for trials on several workers, the
    driver of their Ray Train run (studies/trials/train_driver.py)."""
    if settings.workers_per_trial > 1:
        return multi_worker_trainable(trial_workers(settings.workers_per_trial, settings.cpus_per_trial,
                                                    settings.gpus_per_trial, settings.experiment_path,
                                                    CHECKPOINTS_PER_TRIAL))
    return tune.with_resources(train_ensemble, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def trial_callbacks(settings: StudySettings) -> list[tune.Callback]:
    """What a study's Tuners need beside their MLflow and Optuna callbacks: a whole copy of each of Tune's state saves
    (studies/lifecycle/state_files.py); for trials on several workers, the release of an ended trial's workers."""
    return [StateKeeper(), *([ReleaseTrainGroups()] if settings.workers_per_trial > 1 else [])]


def build_tuner(settings: StudySettings, experiment_id: str, n_classes: int) -> tune.Tuner:
    constants = trial_constants(settings)
    space = settings.space
    metric, mode = search_objectives(settings)  # a define-by-run space takes no metric from TuneConfig
    with quiet_optuna():
        searcher = OptunaSearch(
            space=SpaceSampler(space, n_classes, trial_config(constants).to_flat(), study_seed=settings.seed),
            metric=metric,
            mode=mode,
            sampler=optuna.samplers.TPESampler(seed=settings.seed,
                                               n_startup_trials=max(2, min(10, settings.num_samples // 2))),
        )
    if settings.objective == "pareto":  # no ASHA: stopping on Recall@1 alone would bias the front (conclusions/pareto.py)
        scheduler = pareto_scheduler()
    else:
        scheduler = ResumableASHA(time_attr=EPOCH, max_t=settings.max_epochs,
                                  grace_period=max(1, settings.max_epochs // 5), reduction_factor=3)
    return tune.Tuner(
        trainable(settings),
        param_space=constants,
        # metric and mode here (the scheduler takes them from here) also give Ray's console its best trial
        tune_config=tune.TuneConfig(metric=OBJECTIVE, mode="max",
                                    search_alg=ConcurrencyLimiter(searcher, settings.max_concurrent),
                                    scheduler=scheduler, num_samples=settings.num_samples,
                                    reuse_actors=settings.workers_per_trial == 1,  # a reused driver keeps its workers
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=settings.experiment,
            storage_path=str(settings.storage_path),
            # the MLflow one first: a trial's run exists when its Optuna trial is made and names it
            callbacks=[MLflowTrialCallback(settings.tracking_uri, experiment_id, settings.experiment),
                       record_callback(settings, experiment_id, n_classes), *trial_callbacks(settings)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_PER_TRIAL),
            failure_config=tune.FailureConfig(max_failures=0),
            progress_reporter=StudyReporter(parameter_columns(list(space))),
            verbose=1,
        ),
    )


def run_study(settings: StudySettings) -> None:
    """Check everything that can be checked, then run the study and summarize it, holding the study's lock.
    Raises AntimetricError for bad input, StudyInterrupted after Ctrl-C or SIGTERM, StudyFailed when a store
    failed while it ran or no trial succeeded."""
    check_storage(settings.storage_path)
    quiet_console()
    with study_lock(settings):
        check_resume(settings)
        check_resources(settings)
        experiment_id = open_experiment(settings, _artifact_root(settings))
        check_optuna_storage(settings)
        # The dataset is read (the demo generated, on first use: 5 s on 2 cores) while Ray starts (4 s).
        counting = _in_background(count_training_classes, settings)
        session_dir = start_ray(settings)
        try:
            n_classes = counting.result()
            check_nodes(settings)
            if settings.resume:
                tuner = tune.Tuner.restore(str(settings.experiment_path), trainable(settings),
                                           resume_unfinished=True, resume_errored=False)
            else:
                tuner = build_tuner(settings, experiment_id, n_classes)
                save_settings(settings)
            open_parent_run(settings, experiment_id)
            results, table = _fit_and_summarize(settings, tuner, experiment_id,
                                                lambda done: summarize(settings, done, experiment_id, n_classes))
            check_some_trial_succeeded(settings, results, experiment_id)
            if settings.confirm_top:
                ranked = ranked_configurations(settings, table, results, experiment_id)
                confirming = confirm_tuner(settings, experiment_id, ranked, trainable(settings),
                                           tune.CheckpointConfig(num_to_keep=CHECKPOINTS_PER_TRIAL),
                                           trial_callbacks(settings))
                _fit_and_summarize(settings, confirming, experiment_id,
                                   lambda done: report_confirmation(settings, done, experiment_id))
        finally:
            ray.shutdown()
            if session_dir is not None:  # Ray's local copies of trial folders and state files (all in storage
                for folder in (RAY_STAGING_FOLDER, SCRATCH):  # now), and what trials stopped at once left
                    shutil.rmtree(Path(session_dir) / folder, ignore_errors=True)


def _fit_and_summarize(settings: StudySettings, tuner: tune.Tuner, experiment_id: str,
                       summary: Callable[[tune.ResultGrid], Any]) -> tuple[tune.ResultGrid, Any]:
    """Tuner.fit, then summary(its results) (of the search, or of the confirmation stage): (the results, what
    the summary returned); what stops them ends the runs KILLED and raises StudyInterrupted or StudyFailed."""
    settings_file = settings.experiment_path / SETTINGS_FILE
    had_settings = settings_file.exists()

    def storage_lost() -> StudyFailed | None:  # Ray makes the study's folder again; it has no settings file
        if not had_settings or settings_file.exists():
            return None
        return StudyFailed(f"--storage-path {settings.storage_path} lost the study's folder while it ran (deleted or "
                           "emptied): its saved state and checkpoints are gone, so --resume cannot continue it; start "
                           "the study again with --experiment NEW_NAME", resumable=False)
    try:
        try:
            results, interrupted = fit_until_interrupted(tuner)
        except KeyboardInterrupt:  # a second Ctrl-C: Tune stopped without saving its state once more
            results, interrupted = None, True
        lost = storage_lost()
        if lost is not None:
            raise lost
        if interrupted or results.num_terminated + results.num_errors < len(results):
            raise StudyInterrupted
        return results, summary(results)
    except (KeyboardInterrupt, StudyFailed):
        stop_runs(settings, experiment_id)
        raise
    except Exception as error:  # Ray's own, when its storage went; a store's
        lost = storage_lost()
        if lost is None and not isinstance(error, STORE_ERRORS):
            raise
        stop_runs(settings, experiment_id)
        raise lost or StudyFailed(f"a store failed while the study ran ({type(error).__name__}: "
                                  f"{store_failure(error)}); fix it", resumable=True) from None


def _in_background(function, *args) -> Future:
    """`function(*args)` in a thread of its own; its Future's result() waits for it, or raises what it raised."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)  # the call runs to its end; the thread ends with it
    return future


def open_parent_run(settings: StudySettings, experiment_id: str) -> str:
    """The study's parent run in MLflow: a new one for a new study, the same one on --resume. Its params are
    the study's options and fixed training options; what --resume may change (resources) are tags."""
    params = {"dataset": settings.name, "data_path": str(settings.data_path), "num_samples": settings.num_samples,
              "max_epochs": settings.max_epochs, "max_concurrent": settings.max_concurrent, "seed": settings.seed,
              "searched": ", ".join(settings.space), "objective": settings.objective, **settings.fixed}
    if settings.objective == "pareto":
        params["cost"] = settings.cost
    tags = {"dataset": dataset_label(settings.name), "study_dir": str(settings.experiment_path),
            "cpus_per_trial": f"{settings.cpus_per_trial:g}", "gpus_per_trial": f"{settings.gpus_per_trial:g}",
            "workers_per_trial": str(settings.workers_per_trial)}
    return open_study_run(settings.tracking_uri, experiment_id, settings.experiment, params, tags, settings.space,
                          new=not settings.resume)


def check_resume(settings: StudySettings) -> None:
    """--resume needs a study Tune can restore; a new study needs a name not taken."""
    path = settings.experiment_path
    if not settings.resume:
        if study_exists(settings):
            raise ConfigError(f"a study named {settings.experiment} exists in {path}; pass --resume to continue it "
                              "or --experiment NEW_NAME to start another")
        return
    if not study_exists(settings):
        raise ConfigError(f"--resume: no study to resume in {path}; drop --resume to start one")
    for folder in (path, confirm_path(settings)):
        cut_short = cut_short_state_files(folder)
        if cut_short and restore_kept_state(folder, cut_short):
            print(f"{' and '.join(file.name for file in cut_short)} cut short when the study's driver was killed; "
                  f"their whole copies from {folder / KEPT_FOLDER} are back in place", file=sys.stderr)
            cut_short = cut_short_state_files(folder)
        if cut_short:
            raise ConfigError(f"--resume: {cut_short[0]} was cut short when the study's driver was killed (Ray copies "
                              "its state files without an atomic rename) and no whole copy of it was kept, so Tune "
                              "would silently start the study over; start a new one with --experiment NEW_NAME")


def study_exists(settings: StudySettings) -> bool:
    return tune.Tuner.can_restore(str(settings.experiment_path))


def count_training_classes(settings: StudySettings) -> int:
    """Training classes left after the validation split: what meta-class sizes must fit."""
    config = trial_config(trial_constants(settings))
    index = load_index(config.data, progress=sys.stderr.isatty())
    n_classes = len(make_splits(index, config.data.val_fraction, config.data.max_per_class,
                                config.train.seed).train_classes)
    if settings.confirm_top:  # as many folds as repeats, or a one-line ConfigError before any trial
        make_splits(index, config.data.val_fraction, config.data.max_per_class, settings.seed,
                    val_fold=settings.repeats - 1)
    return n_classes


def start_ray(settings: StudySettings) -> str | None:
    """Connect to --address, or start Ray here with every port on 127.0.0.1; returns the session folder
    of a Ray started here (None on a cluster)."""
    if settings.address:
        try:
            ray.init(address=settings.address, log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigError(f"--address {settings.address}: {exc}") from None
        sigterm_as_ctrl_c()
        return None
    keep_ray_on_localhost()
    context = ray.init(include_dashboard=False, log_to_driver=False)
    sigterm_as_ctrl_c()
    return context.address_info["session_dir"]


def _artifact_root(settings: StudySettings) -> Path | None:
    return local_artifact_root(settings.tracking_uri)
