"""The end of a study: the trials table, best checkpoints and plots in MLflow, the printed summary."""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pandas as pd
import torch

from antimetric.atomic import torch_save
from antimetric.train import BEST_FILE, RETRIEVALS_FILE, fit
from studies.optuna_live import finish_study
from studies.optuna_record import load_command, optuna_storage_uri, trial_records
from studies.pareto import pareto_cost, print_front, record_front
from studies.registry import register_best_trial
from studies.settings import StudySettings, trial_constants
from studies.spaces import distributions
from studies.study_run import log_summary, ui_command
from studies.tracking import (
    CHECKPOINT_ARTIFACT,
    SEARCH,
    close_finished_runs,
    has_artifact,
    log_checkpoint,
    runs_by_trial,
)
from studies.trainable import COST_KEYS, EPOCH, OBJECTIVE, ended_early, trial_config


def trials_table(results, searched: list[str]) -> pd.DataFrame:
    """One row per trial, sorted by the objective: its best validation epoch and the test
    metrics at that epoch, what its ensemble costs, how far it ran, and its searched parameters."""
    rows = []
    for result in results:
        config = result.config or {}
        row: dict[str, Any] = {"trial_id": (result.metrics or {}).get("trial_id", ""), "trial_dir": _trial_dir(result),
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


def log_best_checkpoints(settings: StudySettings, results, experiment_id: str, stage: str = SEARCH) -> None:
    """Each trial's best checkpoint (model weights, meta-class ids, config, epoch) and that epoch's retrieval
    grid as artifacts of its run."""
    runs = runs_by_trial(settings.tracking_uri, experiment_id, stage)
    for result in results:
        run = runs.get(_trial_dir(result))
        if run is None or result.error or result.metrics_dataframe is None:
            continue
        if has_artifact(settings.tracking_uri, run.info.run_id, CHECKPOINT_ARTIFACT):
            continue  # logged before the study was resumed
        checkpoint = result.checkpoint  # the latest; it carries the best epoch's weights (train_ensemble)
        if checkpoint is None:
            continue
        with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
            if not (Path(folder) / BEST_FILE).exists():
                continue
            best = torch.load(Path(folder) / BEST_FILE, map_location="cpu", weights_only=True)
            torch_save(Path(out) / BEST_FILE, {k: best[k] for k in ("epoch", "model", "meta_ids", "config", "metrics")
                                               if k in best})
            if (Path(folder) / RETRIEVALS_FILE).exists():
                shutil.copy2(Path(folder) / RETRIEVALS_FILE, Path(out) / RETRIEVALS_FILE)
            log_checkpoint(settings.tracking_uri, run.info.run_id, Path(out))


def optuna_plots(storage: str, study_name: str, folder: Path) -> dict[str, Path]:
    """PNG files of Optuna's plots of the study recorded in `storage` (write_study), read back from there:
    what optuna-dashboard shows is what MLflow keeps."""
    import matplotlib.pyplot as plt

    files = {}
    for name, figure in optuna_figures(optuna.load_study(study_name=study_name, storage=storage)):
        path = folder / f"{name}.png"
        figure.set_size_inches(11, 5.5)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        files[name] = path
    return files


def optuna_figures(study: optuna.Study) -> Iterator[tuple[str, Any]]:
    """(name, matplotlib figure) of each Optuna plot of the study: each trial's objective per epoch (PRUNED
    ones too), the optimisation history (x is the trial number: the order the trials started), and from
    the COMPLETE trials alone, as Optuna draws them, parameter importances, parallel coordinate and slice. Of a
    Pareto study (two objectives) these plots show the first, OBJECTIVE, and the Pareto front is drawn too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plt

    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    counts = f"{complete} COMPLETE of {len(trials)} trials"
    target = (lambda trial: trial.values[0]) if len(study.directions) > 1 else None  # OBJECTIVE
    plots: list[tuple[str, Callable, str]] = []
    if any(t.intermediate_values for t in trials):
        plots.append(("intermediate_values", optuna_plt.plot_intermediate_values,
                      f"{OBJECTIVE} per epoch of the {sum(bool(t.intermediate_values) for t in trials)} trials that reported"))
    if complete:
        plots.append(("optimization_history", partial(optuna_plt.plot_optimization_history, target=target,
                                                      target_name=OBJECTIVE),
                      f"Optimization history: {counts}, numbered in the order they started"))
        if target is not None:
            plots.append(("pareto_front", partial(optuna_plt.plot_pareto_front, target_names=study.metric_names),
                          f"Pareto front of {counts}: {' against '.join(study.metric_names)}"))
    if complete >= 2:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        plots += [("param_importances", partial(optuna_plt.plot_param_importances, evaluator=evaluator, target=target,
                                                target_name=OBJECTIVE), f"Parameter importances from {counts}"),
                  ("parallel_coordinate", partial(optuna_plt.plot_parallel_coordinate, target=target,
                                                  target_name=OBJECTIVE), f"Parallel coordinate: {counts}"),
                  ("slice", partial(optuna_plt.plot_slice, target=target, target_name=OBJECTIVE), f"Slice: {counts}")]
    else:  # one point per parameter says nothing of it
        print(f"note: no parameter importances, parallel coordinate or slice plot: they need 2 COMPLETE trials "
              f"(ones ASHA did not stop), the study has {complete}")
    for name, plot, title in plots:
        before = set(plt.get_fignums())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. no parameter varies among the COMPLETE trials
                print(f"note: no {name} plot ({exc})")
                for number in set(plt.get_fignums()) - before:
                    plt.close(number)
                continue
        figure = plt.gcf()
        if figure.get_suptitle():  # Optuna titles a figure of several axes, else its one axes
            figure.suptitle(title)
        else:
            figure.axes[0].set_title(title)
        if name in ("intermediate_values", "optimization_history"):  # epochs and trial numbers
            figure.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "intermediate_values":
            _label_states(figure.axes[0], trials)
        yield name, figure


def _label_states(axes, trials: list[optuna.trial.FrozenTrial]) -> None:
    """Optuna's legend of learning curves says "Trial3"; it says "trial 3 (PRUNED)" here."""
    states = {f"Trial{t.number}": f"trial {t.number} ({t.state.name})" for t in trials}
    legend = axes.get_legend()
    for text in legend.get_texts() if legend else []:
        text.set_text(states.get(text.get_text(), text.get_text()))
    axes.set_xlabel("epoch")
    axes.set_ylabel(OBJECTIVE)


def untrained_recall(config: dict[str, Any], folder: Path) -> float:
    """Test Recall@1 of the same ensemble before training: the baseline the study must beat."""
    values = {**config, "train": False, "output_dir": str(folder), "run_name": "untrained"}
    result = fit(trial_config(values))
    return result.best_metrics["test_recall_at_1"]


def summarize(settings: StudySettings, results, experiment_id: str, n_classes: int) -> pd.DataFrame:
    """The search's summary. With a confirmation stage to come, the model registered is its winner's, not the
    search's best trial's (confirm_stage.py)."""
    searched = list(settings.space)
    table = trials_table(results, searched)
    log_best_checkpoints(settings, results, experiment_id)
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
        study_run_id = log_summary(settings.tracking_uri, experiment_id, settings.experiment, files, metrics,
                                   best_config)
    model_uri = None
    if best_trial_dir is not None and not settings.confirm_top:
        model_uri = register_best_trial(settings.tracking_uri, experiment_id, settings.experiment, study_run_id,
                                        best_trial_dir)
    _print_summary(settings, table, metrics, best_config, experiment_id)
    if front is not None:
        print_front(front, settings)
    print(f"\nOptuna study of every trial, in the order they started:\n  {load_command(settings)}")
    if model_uri is not None:
        print(f"\nThe best trial's ensemble as an MLflow model (images in, embeddings out), e.g. served on 127.0.0.1:\n"
              f"  MLFLOW_TRACKING_URI={settings.tracking_uri} mlflow models serve -m {model_uri} --env-manager local "
              "--host 127.0.0.1 --port 5001")
    return table


def _print_summary(settings, table: pd.DataFrame, metrics: dict, best_config: dict, experiment_id: str) -> None:
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.precision", 3):
        print("\nTrials, best first:")
        hidden = [c for c in table.columns if c == "trial_dir" or c.startswith("test_") and
                  c not in ("test_recall_at_1", "test_map_at_r")]
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
