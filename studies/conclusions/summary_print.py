"""What a search prints at its end: its trials, its best configuration and the commands that open the study."""
from __future__ import annotations

import json

import pandas as pd

from studies.conclusions.pareto import print_front
from studies.design.settings import StudySettings
from studies.record.optuna_record import load_command
from studies.record.study_run import ui_command
from studies.trials.metric_names import TEST, TEST_MAP_AT_R, TEST_RECALL, UNTRAINED_TEST_RECALL


def print_search_summary(settings: StudySettings, table: pd.DataFrame, metrics: dict, best_config: dict,
                         experiment_id: str, front: pd.DataFrame | None, model_uri: str | None) -> None:
    """The trials best first, the counts, the best config and its test Recall@K against the untrained ensemble,
    the Pareto front (a Pareto study), and the commands that open the study: MLflow's UI, the Optuna record and
    serving the registered model (when one was)."""
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.precision", 3):
        print("\nTrials, best first:")
        hidden = [c for c in table.columns if c in ("mlflow_run_id", "ray_trial_id", "trial_dir") or
                  c.startswith(TEST) and c not in (TEST_RECALL, TEST_MAP_AT_R)]
        print(table.drop(columns=hidden).to_string(index=False))
    print(f"\n{metrics['trials']} trials, {metrics['stopped_early']} stopped early by ASHA, {metrics['failed']} failed")
    if best_config:
        searched = {k: best_config[k] for k in settings.space}
        print(f"best config: {json.dumps(searched)}")
        recalls = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_recall")}
        print(f"its test Recall@K at its best validation epoch: {recalls}")
        print(f"untrained ensemble of that config: {TEST_RECALL} = {metrics[UNTRAINED_TEST_RECALL]:.4f}")
    print(f"\nMLflow UI for this study (its trials, best first; the view `study` nests them under the study's run):\n"
          f"  {ui_command(settings.tracking_uri, experiment_id)}")
    if front is not None:
        print_front(front, settings)
    print(f"\nOptuna record of the search (live while it runs; trial numbers as above):\n  {load_command(settings)}")
    if model_uri is not None:
        print(f"\nThe best trial's ensemble as an MLflow model (images in, embeddings out), e.g. served on 127.0.0.1:\n"
              f"  MLFLOW_TRACKING_URI={settings.tracking_uri} mlflow models serve -m {model_uri} --env-manager local "
              "--host 127.0.0.1 --port 5001")
