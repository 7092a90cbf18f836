"""The summary a search prints: its trials best first without Ray's and MLflow's ids, the counts, the best
config against the untrained ensemble, and the commands that open the study."""
from pathlib import Path

import pandas as pd

from studies.conclusions.summary_print import print_search_summary
from studies.design.settings import StudySettings


def _settings(tmp_path: Path) -> StudySettings:
    return StudySettings(name="demo", data_path=tmp_path, num_samples=2, max_epochs=2, max_concurrent=1,
                         cpus_per_trial=1, gpus_per_trial=0, address=None,
                         tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="s", storage_path=tmp_path,
                         resume=False, seed=0, fixed={}, space={"lr": {"type": "float", "low": 1e-3, "high": 1e-2}})


def test_the_printed_summary(tmp_path, capsys):
    table = pd.DataFrame([{"trial": "trial 1", "mlflow_run_id": "r1", "status": "TERMINATED", "val_recall_at_1": 0.8,
                           "test_recall_at_1": 0.7, "test_recall_at_2": 0.9, "stopped_early": False, "lr": 0.002,
                           "ray_trial_id": "a1", "trial_dir": "trial_1_a1"},
                          {"trial": "trial 0", "mlflow_run_id": "r0", "status": "ERROR", "val_recall_at_1": None,
                           "test_recall_at_1": None, "test_recall_at_2": None, "stopped_early": False, "lr": 0.005,
                           "ray_trial_id": "a0", "trial_dir": "trial_0_a0"}])
    metrics = {"trials": 2, "stopped_early": 0, "failed": 1, "test_recall_at_1": 0.7, "test_recall_at_2": 0.9,
               "untrained_test_recall_at_1": 0.25}
    print_search_summary(_settings(tmp_path), table, metrics, {"lr": 0.002, "seed": 3}, "7", None, "models:/m@best")
    out = capsys.readouterr().out
    rows = out.split("Trials, best first:\n", 1)[1].split("\n\n", 1)[0]
    assert "trial 1" in rows and "r1" not in rows and "a1" not in rows and "test_recall_at_2" not in rows
    assert "2 trials, 0 stopped early by ASHA, 1 failed" in out
    assert 'best config: {"lr": 0.002}' in out  # the searched values only
    assert "{'test_recall_at_1': 0.7, 'test_recall_at_2': 0.9}" in out and "test_recall_at_1 = 0.2500" in out
    assert "#/experiments/7/runs" in out and "optuna.load_study(study_name='s'" in out
    assert "mlflow models serve -m models:/m@best" in out
