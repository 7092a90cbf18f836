"""The end of a search, recorded: the trials' best weights and the study's summary and plots in MLflow, the Optuna
record completed, the best trial registered; then the summary printed (summary_print.py)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from antimetric.training.loop import fit
from studies.conclusions.pareto import record_front
from studies.conclusions.plots import optuna_plots
from studies.conclusions.study_note import NOTE_TAG, best_params, search_note, summary_tags, trial_pick
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


def keep_ended_trials(settings: StudySettings, results, runs: dict[str, Any]) -> None:
    """Each trial's best weights (its logged model) and retrieval grid in its run, where the MLflow callback did
    not log them when it ended (a driver killed before: record/trial_weights.py); then its checkpoints deleted: the
    study's state is saved, every trial ended, no resume needs them. `runs`: the trials' runs (runs_by_trial)."""
    for result in results:
        run = runs.get(trial_dir(result))
        if run is None:
            continue
        log_ended_trial(settings.tracking_uri, run, ended_checkpoint(result.checkpoint, result.metrics, result.filesystem))
        delete_checkpoints(result.filesystem, result.path)
        delete_train_run(result.filesystem, result.metrics)


def untrained_recall(config: dict[str, Any], folder: Path) -> float:
    """Test Recall@1 of the same ensemble before training: the baseline the study must beat."""
    values = {**config, "train": False, "output_dir": str(folder), "run_name": "untrained"}
    result = fit(trial_config(values))
    return result.best_metrics[TEST_RECALL]


def summarize(settings: StudySettings, results, experiment_id: str, n_classes: int) -> pd.DataFrame:
    """The search's summary. With a confirmation stage to come, the model registered is its winner's, not the
    search's best trial's (lifecycle/confirm_stage.py)."""
    searched = list(settings.space)
    runs = runs_by_trial(settings.tracking_uri, experiment_id)
    table = trials_table(results, searched, runs)
    keep_ended_trials(settings, results, runs)
    close_finished_runs(settings.tracking_uri, experiment_id,
                        {trial_dir(r): "ERROR" if r.error else "TERMINATED" for r in results},
                        {trial_dir(r): str(r.error) for r in results if r.error})
    finished = table[table["status"] == "TERMINATED"] if "status" in table else table
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table_path = folder / "trials.csv"
        table.to_csv(table_path, index=False)
        fixed = trial_config(trial_constants(settings)).to_flat()
        storage, cost = optuna_storage_uri(settings), settings.pareto_cost
        finish_study(trial_records(results, searched, cost), storage, settings.experiment,
                     distributions(settings.space, n_classes, fixed), cost)
        files = {"trials": table_path, **optuna_plots(storage, settings.experiment, folder)}
        metrics: dict[str, float] = {"trials": len(table), "stopped_early": int(table["stopped_early"].sum()),
                                     "failed": int((table["status"] == "ERROR").sum())}
        front = None if cost is None else record_front(settings, table, experiment_id, folder, files, metrics)
        best_config: dict[str, Any] = {}
        best_trial_dir = None
        if len(finished) and OBJECTIVE in finished:
            best = finished.iloc[0]
            result = next(r for r in results if trial_dir(r) == best["trial_dir"])
            best_config, best_trial_dir = trial_config(result.config).to_flat(), best["trial_dir"]
            metrics.update({k: float(best[k]) for k in finished.columns if k == OBJECTIVE or k.startswith(TEST)})
            metrics[UNTRAINED_TEST_RECALL] = untrained_recall(result.config, folder)
        best_pick = None if best_trial_dir is None else trial_pick(
            settings.tracking_uri, experiment_id, best_trial_dir, {k: best_config[k] for k in searched})
        # with a confirmation stage to come, its winner is the study's, and gets best.* (study_note.py)
        study_run_id = log_summary(
            settings.tracking_uri, experiment_id, settings.experiment, files, metrics, best_config,
            tags={NOTE_TAG: search_note(settings, experiment_id, best_pick, metrics),
                  **summary_tags(None if settings.confirm_top else best_pick, best_pick)},
            params=best_params(best_pick) if best_pick is not None and not settings.confirm_top else None)
    model_uri = None
    if best_trial_dir is not None and not settings.confirm_top:
        model_uri = register_best_trial(settings.tracking_uri, experiment_id, settings.experiment, study_run_id,
                                        best_trial_dir)
    print_search_summary(settings, table, metrics, best_config, experiment_id, front, model_uri)
    return table
