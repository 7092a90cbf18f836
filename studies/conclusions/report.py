"""The end of a search, recorded: the trials' best weights and the study's summary and plots in MLflow, the Optuna
record completed, the best trial registered; then the summary printed (summary_print.py).

The steps that end the trials (their weights kept, checkpoints deleted, runs closed, the untrained baseline) serve
the confirmation stage's end too (lifecycle/confirm_stage.py). Each takes the trials' MLflow runs, read once
(runs_by_trial), by trial folder.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from antimetric.training.loop import fit
from studies.conclusions.pareto import record_front
from studies.conclusions.plots import optuna_plots
from studies.conclusions.study_note import NOTE_TAG, Pick, best_params, search_note, summary_tags, trial_pick
from studies.conclusions.summary_print import print_search_summary
from studies.conclusions.trials_table import trial_dir, trials_table
from studies.design.settings import StudySettings, trial_constants
from studies.design.spaces import distributions
from studies.record.optuna_live import finish_study
from studies.record.optuna_record import optuna_storage_uri, trial_records
from studies.record.registry import register_best_trial
from studies.record.study_run import log_summary
from studies.record.tracking import close_finished_runs, runs_by_trial
from studies.record.trial_weights import delete_checkpoints, delete_train_run, ended_checkpoint, log_ended_trial
from studies.trials.metric_names import TEST, TEST_RECALL, UNTRAINED_TEST_RECALL
from studies.trials.trainable import OBJECTIVE, trial_config

TRIALS_FILE = "trials.csv"  # the trials table, on the study's run


@dataclass(frozen=True)
class BestTrial:
    """The search's best finished trial: its row of the trials table, its Ray result and its whole config, flat."""

    row: pd.Series
    result: Any
    config: dict[str, Any]


def summarize(settings: StudySettings, results, experiment_id: str, n_classes: int) -> pd.DataFrame:
    """The search's end, in this order, and its trials table (best first). With a confirmation stage to come, the
    model registered is its winner's, not the search's best trial's (lifecycle/confirm_stage.py)."""
    runs = runs_by_trial(settings.tracking_uri, experiment_id)
    table = trials_table(results, list(settings.space), runs)
    log_ended_trials_weights(settings.tracking_uri, results, runs)
    delete_ended_trials_checkpoints(results, runs)
    close_open_runs(settings.tracking_uri, results, runs)
    complete_optuna_record(settings, results, n_classes)
    best = best_trial(table, results)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {"trials": write_trials_table(table, folder),
                 **optuna_plots(optuna_storage_uri(settings), settings.experiment, folder)}
        metrics = trial_counts(table)
        front = None if settings.pareto_cost is None else record_front(settings, table, runs, folder, files, metrics)
        if best is not None:
            metrics.update(selected_epoch_metrics(best.row))
            metrics[UNTRAINED_TEST_RECALL] = untrained_recall(best.result.config, folder)
        pick = None if best is None else trial_pick(runs.get(best.row["trial_dir"]),
                                                    {key: best.config[key] for key in settings.space})
        study_run_id = log_search_summary(settings, experiment_id, files, metrics, best, pick)
    model_uri = None
    if best is not None and not settings.confirm_top:
        model_uri = register_best_trial(settings.tracking_uri, settings.experiment, study_run_id,
                                        best.row["trial_dir"], runs)
    print_search_summary(settings, table, metrics, {} if best is None else best.config, experiment_id, front,
                         model_uri)
    return table


def log_ended_trials_weights(tracking_uri: str, results, runs: dict[str, Any]) -> None:
    """Each trial's best weights (its logged model) and retrieval grid in its run, where the MLflow callback did not
    log them when it ended (a driver killed before: record/trial_weights.py). A trial without a run is left out."""
    for result in results:
        run = runs.get(trial_dir(result))
        if run is not None:
            log_ended_trial(tracking_uri, run, ended_checkpoint(result.checkpoint, result.metrics, result.filesystem))


def delete_ended_trials_checkpoints(results, runs: dict[str, Any]) -> None:
    """The checkpoints (and a multi-worker trial's Train run) of each trial with a run, deleted: the study's state
    is saved, every trial ended, no resume needs them, and their weights are in the runs (log_ended_trials_weights)."""
    for result in results:
        if trial_dir(result) in runs:
            delete_checkpoints(result.filesystem, result.path)
            delete_train_run(result.filesystem, result.metrics)


def close_open_runs(tracking_uri: str, results, runs: dict[str, Any]) -> None:
    """The runs a killed driver left RUNNING (or Ctrl-C left KILLED) ended as Ray's results say (close_finished_runs)."""
    close_finished_runs(tracking_uri, runs, {trial_dir(r): "ERROR" if r.error else "TERMINATED" for r in results},
                        {trial_dir(r): str(r.error) for r in results if r.error})


def complete_optuna_record(settings: StudySettings, results, n_classes: int) -> None:
    """The search's Optuna record, every trial ended as Ray's results say (record/optuna_live.py)."""
    fixed = trial_config(trial_constants(settings)).to_flat()
    cost = settings.pareto_cost
    finish_study(trial_records(results, list(settings.space), cost), optuna_storage_uri(settings),
                 settings.experiment, distributions(settings.space, n_classes, fixed), cost)


def best_trial(table: pd.DataFrame, results) -> BestTrial | None:
    """The first finished trial of the trials table (best first); None when none finished with an objective."""
    finished = table[table["status"] == "TERMINATED"] if "status" in table else table
    if not len(finished) or OBJECTIVE not in finished:
        return None
    row = finished.iloc[0]
    result = next(r for r in results if trial_dir(r) == row["trial_dir"])
    return BestTrial(row, result, trial_config(result.config).to_flat())


def write_trials_table(table: pd.DataFrame, folder: Path) -> Path:
    path = folder / TRIALS_FILE
    table.to_csv(path, index=False)
    return path


def trial_counts(table: pd.DataFrame) -> dict[str, float]:
    """The trials, those ASHA stopped early and those that failed."""
    return {"trials": len(table), "stopped_early": int(table["stopped_early"].sum()),
            "failed": int((table["status"] == "ERROR").sum())}


def selected_epoch_metrics(row: pd.Series) -> dict[str, float]:
    """A trial's objective and test metrics at its selected epoch, from its row of the trials table."""
    return {key: float(row[key]) for key in row.index if key == OBJECTIVE or key.startswith(TEST)}


def untrained_recall(config: dict[str, Any], folder: Path) -> float:
    """Test Recall@1 of the same ensemble before training, the baseline the study must beat: fit() of `config`
    without training (it only evaluates), its run folder in `folder`."""
    values = {**config, "train": False, "output_dir": str(folder), "run_name": "untrained"}
    result = fit(trial_config(values))
    return result.best_metrics[TEST_RECALL]


def log_search_summary(settings: StudySettings, experiment_id: str, files: dict[str, Path], metrics: dict[str, float],
                       best: BestTrial | None, pick: Pick | None) -> str:
    """The summary on the study's run (record/study_run.py log_summary): `files`, `metrics`, the best trial's config,
    its description and tags; the winner's tags and params only when no confirmation stage follows (its winner is
    the study's then: study_note.py). Returns the study run's id."""
    winner = None if settings.confirm_top else pick
    return log_summary(
        settings.tracking_uri, experiment_id, settings.experiment, files, metrics, {} if best is None else best.config,
        tags={NOTE_TAG: search_note(settings, experiment_id, pick, metrics), **summary_tags(winner, pick)},
        params=None if winner is None else best_params(winner))
