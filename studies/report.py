"""The end of a study: the trials table, best checkpoints and plots in MLflow, the printed summary."""
from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from antimetric.atomic import torch_save
from antimetric.train import BEST_FILE, fit
from studies.settings import StudySettings, trial_constants
from studies.spaces import distributions
from studies.tracking import (
    CHECKPOINT_ARTIFACT,
    close_finished_runs,
    has_artifact,
    log_checkpoint,
    log_summary,
    runs_by_trial,
    ui_command,
)
from studies.trainable import EPOCH, OBJECTIVE, trial_config


def trials_table(results, searched: list[str]) -> pd.DataFrame:
    """One row per trial, sorted by the objective: its best validation epoch and the test
    metrics at that epoch, how far it ran, and its searched parameters."""
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
        row["stopped_early"] = bool(row.get("epochs", 0) < int(config.get("num_epochs", 0)) and not result.error)
        row.update({k: config.get(k) for k in searched})
        if result.error:
            row["error"] = str(result.error).strip().splitlines()[-1][:200]
        rows.append(row)
    table = pd.DataFrame(rows)
    if OBJECTIVE in table:
        table = table.sort_values(OBJECTIVE, ascending=False, na_position="last")
    return table.reset_index(drop=True)


def _trial_dir(result) -> str:
    """The trial's folder name, which its MLflow run carries as a tag (runs_by_trial's key)."""
    return Path(result.path).name


def log_best_checkpoints(settings: StudySettings, results, experiment_id: str) -> None:
    """Each trial's best checkpoint (model weights, meta-class ids, config, epoch) as an artifact of its run."""
    runs = runs_by_trial(settings.tracking_uri, experiment_id)
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
            torch_save(Path(out) / BEST_FILE, {k: best[k] for k in ("epoch", "model", "meta_ids", "config")})
            log_checkpoint(settings.tracking_uri, run.info.run_id, Path(out))


def optuna_plots(table: pd.DataFrame, settings: StudySettings, n_classes: int, fixed: dict, folder: Path
                 ) -> dict[str, Path]:
    """Optuna's optimisation history and parameter importances, from a study rebuilt from the table
    (so a resumed study plots all its trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plt

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    dists = distributions(settings.space, n_classes, fixed)
    study = optuna.create_study(direction="maximize")
    for _, row in table.iterrows():
        value = row.get(OBJECTIVE)
        if value is None or not math.isfinite(value):
            continue
        params = {k: _plain(row[k]) for k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(value)))
    files = {}
    for name, plot in (("optimization_history", optuna_plt.plot_optimization_history),
                       ("param_importances", optuna_plt.plot_param_importances)):
        try:
            plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. too few finished trials for importances
            print(f"note: no {name} plot ({exc})")
            continue
        path = folder / f"{name}.png"
        plt.gcf().set_size_inches(9, 5)
        plt.tight_layout()
        plt.savefig(path, dpi=100)
        plt.close("all")
        files[name] = path
    return files


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def untrained_recall(config: dict[str, Any], folder: Path) -> float:
    """Test Recall@1 of the same ensemble before training: the baseline the study must beat."""
    values = {**config, "train": False, "output_dir": str(folder), "run_name": "untrained"}
    result = fit(trial_config(values))
    return result.best_metrics["test_recall_at_1"]


def summarize(settings: StudySettings, results, experiment_id: str, n_classes: int) -> pd.DataFrame:
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
        files = {"trials": table_path, **optuna_plots(table, settings, n_classes, fixed, folder)}
        metrics: dict[str, float] = {"trials": len(table), "stopped_early": int(table["stopped_early"].sum()),
                                     "failed": int((table["status"] == "ERROR").sum())}
        best_config: dict[str, Any] = {}
        if len(finished) and OBJECTIVE in finished:
            best = finished.iloc[0]
            result = next(r for r in results if _trial_dir(r) == best["trial_dir"])
            best_config = trial_config(result.config).to_flat()
            metrics.update({k: float(best[k]) for k in finished.columns if k == OBJECTIVE or k.startswith("test_")})
            metrics["untrained_test_recall_at_1"] = untrained_recall(result.config, folder)
        log_summary(settings.tracking_uri, experiment_id, settings.experiment, files, metrics, best_config)
    _print_summary(settings, table, metrics, best_config, experiment_id)
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
    print(f"\nMLflow UI for this study:\n  {ui_command(settings.tracking_uri, experiment_id)}")
