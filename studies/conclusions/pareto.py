"""`--objective pareto`: validation Recall@1 against what an ensemble costs to embed an image (`--cost`), and
the study's answer: the trials no other trial beats on both, its Pareto front.

A Pareto study runs every trial to its last epoch (Ray's FIFO scheduler), not ASHA. ASHA ranks trials on
one metric, and stopping them on Recall@1 alone would bias the front: it stops first the cheap trials whose
recall is low early, yet one of them may be on the front (no trial as cheap recalls more), and a stopped
trial's cost is exact while its recall is that of a trial trained for fewer epochs, so it looks dominated
when it might not be. FIFO keeps the front honest, at the price of the time ASHA would save.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import FIFOScheduler

from studies.design.settings import StudySettings
from studies.trials.trainable import OBJECTIVE

PARETO_TAG = "pareto"  # "true" on the runs of the front's trials, "false" on the other trials' runs
FRONT_FILE = "pareto_front.csv"


def search_objectives(settings: StudySettings) -> tuple[str | list[str], str | list[str]]:
    """OptunaSearch's metric and mode: Recall@1 to maximise and, in a Pareto study, the cost to minimise
    (Optuna's TPE sampler handles both)."""
    cost = settings.pareto_cost
    return (OBJECTIVE, "max") if cost is None else ([OBJECTIVE, cost], ["max", "min"])


def pareto_scheduler() -> FIFOScheduler:
    """Every trial to its last epoch: see the module's docstring for why not ASHA."""
    return FIFOScheduler()


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether trial a = (recall, cost) dominates trial b: a recalls at least as much at no more cost, and is
    better in one of the two. Two trials equal in both dominate neither; both stay on the front."""
    (recall_a, cost_a), (recall_b, cost_b) = a, b
    return recall_a >= recall_b and cost_a <= cost_b and (recall_a > recall_b or cost_a < cost_b)


def pareto_candidates(table: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The Pareto front of a trials table (trials_table.trials_table: a trial per row, its best epoch's OBJECTIVE and
    its cost): the rows of the finished trials (TERMINATED, both values known) that no finished trial
    dominates, best recall first. What a Pareto study confirms, in place of the best trials by recall."""
    if OBJECTIVE not in table or cost not in table:  # no trial reported
        return table.iloc[:0]
    finished = table[(table["status"] == "TERMINATED") & table[OBJECTIVE].notna() & table[cost].notna()]
    points = list(zip(finished[OBJECTIVE], finished[cost]))
    on_front = [not any(dominates(other, point) for other in points) for point in points]
    return finished[on_front].sort_values(OBJECTIVE, ascending=False, kind="stable")


def record_front(settings: StudySettings, table: pd.DataFrame, runs: dict[str, Any], folder: Path,
                 files: dict[str, Path], metrics: dict[str, float]) -> pd.DataFrame:
    """A Pareto study's end: each trial's run (`runs`: the search's, by trial folder: runs_by_trial) tagged
    pareto=true or false, the front's rows of the trials table as FRONT_FILE in `folder` (added to `files`, the
    parent run's artifacts) and its size as the metric pareto_front_size (added to `metrics`). Returns the front."""
    front = pareto_candidates(table, settings.cost)
    on_front = set(front["trial_dir"])
    client = MlflowClient(settings.tracking_uri)
    for trial_dir in table["trial_dir"]:
        if trial_dir in runs:
            client.set_tag(runs[trial_dir].info.run_id, PARETO_TAG, str(trial_dir in on_front).lower())
    front.to_csv(folder / FRONT_FILE, index=False)
    files["pareto_front_table"] = folder / FRONT_FILE
    metrics["pareto_front_size"] = len(front)
    return front


def print_front(front: pd.DataFrame, settings: StudySettings) -> None:
    shown = ["trial", OBJECTIVE, settings.cost, *(key for key in settings.space if key in front)]
    print(f"\nPareto front ({OBJECTIVE} up, {settings.cost} down): {len(front)} trials, best recall first; their runs "
          f"are tagged {PARETO_TAG}=true, the table is {FRONT_FILE}:")
    with pd.option_context("display.max_columns", 30, "display.width", 200, "display.precision", 4):
        print(front[shown].to_string(index=False))
