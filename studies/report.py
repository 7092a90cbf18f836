"""The end of a study: the trials table, the trials' best weights and plots in MLflow, the printed summary."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from antimetric.training.loop import fit
from studies.optuna_live import finish_study
from studies.optuna_record import load_command, optuna_storage_uri, trial_records
from studies.pareto import pareto_cost, print_front, record_front
from studies.plots import optuna_plots
from studies.registry import register_best_trial
from studies.settings import StudySettings, trial_constants
from studies.spaces import distributions
from studies.study_note import NOTE_TAG, best_params, search_note, summary_tags, trial_pick
from studies.study_run import log_summary, ui_command
from studies.tracking import NUMBER_TAG, close_finished_runs, runs_by_trial
from studies.trainable import COST_KEYS, EPOCH, OBJECTIVE, ended_early, trial_config
from studies.trial_weights import delete_checkpoints, log_ended_trial


def trials_table(results, searched: list[str], runs: dict[str, Any]) -> pd.DataFrame:
    """One row per trial, sorted by the objective: its name ("trial 3", as its MLflow run and the Optuna record
    number it) and MLflow run id, its best validation epoch and the test metrics at that epoch, what its
    ensemble costs, how far it ran, its searched parameters, and Ray's id and folder of it. `runs`: the trials'
    MLflow runs by trial folder (runs_by_trial)."""
    rows = []
    for result in results:
        config = result.config or {}
        run = runs.get(_trial_dir(result))
        row: dict[str, Any] = {"trial": f"trial {run.data.tags.get(NUMBER_TAG, '?') if run else '?'}",
                               "mlflow_run_id": run.info.run_id if run else "",
                               "status": "ERROR" if result.error else "TERMINATED"}
        history = result.metrics_dataframe
        if history is not None and len(history) and OBJECTIVE in history:
            best = history.loc[history[OBJECTIVE].idxmax()]
            row.update({"epochs": int(history[EPOCH].max()), "best_epoch": int(best[EPOCH]), OBJECTIVE: best[OBJECTIVE]})
            row.update({k: best[k] for k in history.columns if k.startswith("test_")})
            row.update({k: best[k] for k in COST_KEYS if k in history})
        row["stopped_early"] = ended_early(row.get("epochs", 0), config) and not result.error
        row.update({k: config.get(k) for k in searched})
        if result.error:
            row["error"] = str(result.error).strip().splitlines()[-1][:200]
        row.update(ray_trial_id=(result.metrics or {}).get("trial_id", ""), trial_dir=_trial_dir(result))
        rows.append(row)
    table = pd.DataFrame(rows)
    for key in ("embedding_dims", "params"):  # counts: whole numbers, also beside a failed trial's blank
        if key in table:
            table[key] = table[key].astype("Int64")
    if OBJECTIVE in table:
        table = table.sort_values(OBJECTIVE, ascending=False, na_position="last")
    return table.reset_index(drop=True)


def _trial_dir(result) -> str:
    """The trial's folder name, which its MLflow run carries as a tag (runs_by_trial's key)."""
    return Path(result.path).name


def keep_ended_trials(settings: StudySettings, results, runs: dict[str, Any]) -> None:
    """Each trial's best weights (its logged model) and retrieval grid in its run, where the MLflow callback did
    not log them when it ended (a driver killed before: trial_weights.py); then its checkpoints deleted: the
    study's state is saved, every trial ended, no resume needs them. `runs`: the trials' runs (runs_by_trial)."""
    for result in results:
        run = runs.get(_trial_dir(result))
        if run is None:
            continue
        log_ended_trial(settings.tracking_uri, run, result.checkpoint)
        delete_checkpoints(result.filesystem, result.path)


def untrained_recall(config: dict[str, Any], folder: Path) -> float:
    """Test Recall@1 of the same ensemble before training: the baseline the study must beat."""
    values = {**config, "train": False, "output_dir": str(folder), "run_name": "untrained"}
    result = fit(trial_config(values))
    return result.best_metrics["test_recall_at_1"]


def summarize(settings: StudySettings, results, experiment_id: str, n_classes: int) -> pd.DataFrame:
    """The search's summary. With a confirmation stage to come, the model registered is its winner's, not the
    search's best trial's (confirm_stage.py)."""
    searched = list(settings.space)
    runs = runs_by_trial(settings.tracking_uri, experiment_id)
    table = trials_table(results, searched, runs)
    keep_ended_trials(settings, results, runs)
    close_finished_runs(settings.tracking_uri, experiment_id,
                        {_trial_dir(r): "ERROR" if r.error else "TERMINATED" for r in results},
                        {_trial_dir(r): str(r.error) for r in results if r.error})
    finished = table[table["status"] == "TERMINATED"] if "status" in table else table
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table_path = folder / "trials.csv"
        table.to_csv(table_path, index=False)
        fixed = trial_config(trial_constants(settings)).to_flat()
        storage, cost = optuna_storage_uri(settings), pareto_cost(settings)
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
            result = next(r for r in results if _trial_dir(r) == best["trial_dir"])
            best_config, best_trial_dir = trial_config(result.config).to_flat(), best["trial_dir"]
            metrics.update({k: float(best[k]) for k in finished.columns if k == OBJECTIVE or k.startswith("test_")})
            metrics["untrained_test_recall_at_1"] = untrained_recall(result.config, folder)
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
    _print_summary(settings, table, metrics, best_config, experiment_id)
    if front is not None:
        print_front(front, settings)
    print(f"\nOptuna record of the search (live while it runs; trial numbers as above):\n  {load_command(settings)}")
    if model_uri is not None:
        print(f"\nThe best trial's ensemble as an MLflow model (images in, embeddings out), e.g. served on 127.0.0.1:\n"
              f"  MLFLOW_TRACKING_URI={settings.tracking_uri} mlflow models serve -m {model_uri} --env-manager local "
              "--host 127.0.0.1 --port 5001")
    return table


def _print_summary(settings, table: pd.DataFrame, metrics: dict, best_config: dict, experiment_id: str) -> None:
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.precision", 3):
        print("\nTrials, best first:")
        hidden = [c for c in table.columns if c in ("mlflow_run_id", "ray_trial_id", "trial_dir") or
                  c.startswith("test_") and c not in ("test_recall_at_1", "test_map_at_r")]
        print(table.drop(columns=hidden).to_string(index=False))
    print(f"\n{metrics['trials']} trials, {metrics['stopped_early']} stopped early by ASHA, {metrics['failed']} failed")
    if best_config:
        searched = {k: best_config[k] for k in settings.space}
        print(f"best config: {json.dumps(searched)}")
        recalls = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_recall")}
        print(f"its test Recall@K at its best validation epoch: {recalls}")
        print(f"untrained ensemble of that config: test_recall_at_1 = {metrics['untrained_test_recall_at_1']:.4f}")
    print(f"\nMLflow UI for this study (its trials, best first; the view `study` nests them under the study's run):\n"
          f"  {ui_command(settings.tracking_uri, experiment_id)}")
