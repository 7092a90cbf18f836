"""A search's trials as one table: a row per trial from Ray's results and the trials' MLflow runs, best first."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from studies.record.tracking import NUMBER_TAG
from studies.trials.metric_names import TEST
from studies.trials.trainable import COST_KEYS, EPOCH, OBJECTIVE, ended_early


def trials_table(results, searched: list[str], runs: dict[str, Any]) -> pd.DataFrame:
    """One row per trial, sorted by the objective: its name ("trial 3", as its MLflow run and the Optuna record
    number it) and MLflow run id, its best validation epoch and the test metrics at that epoch, what its
    ensemble costs, how far it ran, its searched parameters, and Ray's id and folder of it. `runs`: the trials'
    MLflow runs by trial folder (runs_by_trial)."""
    rows = []
    for result in results:
        config = result.config or {}
        run = runs.get(trial_dir(result))
        row: dict[str, Any] = {"trial": f"trial {run.data.tags.get(NUMBER_TAG, '?') if run else '?'}",
                               "mlflow_run_id": run.info.run_id if run else "",
                               "status": "ERROR" if result.error else "TERMINATED"}
        history = result.metrics_dataframe
        if history is not None and len(history) and OBJECTIVE in history:
            best = history.loc[history[OBJECTIVE].idxmax()]
            row.update({"epochs": int(history[EPOCH].max()), "best_epoch": int(best[EPOCH]), OBJECTIVE: best[OBJECTIVE]})
            row.update({k: best[k] for k in history.columns if k.startswith(TEST)})
            row.update({k: best[k] for k in COST_KEYS if k in history})
        row["stopped_early"] = ended_early(row.get("epochs", 0), config) and not result.error
        row.update({k: config.get(k) for k in searched})
        if result.error:
            row["error"] = str(result.error).strip().splitlines()[-1][:200]
        row.update(ray_trial_id=(result.metrics or {}).get("trial_id", ""), trial_dir=trial_dir(result))
        rows.append(row)
    table = pd.DataFrame(rows)
    for key in ("embedding_dims", "params"):  # counts: whole numbers, also beside a failed trial's blank
        if key in table:
            table[key] = table[key].astype("Int64")
    if OBJECTIVE in table:
        table = table.sort_values(OBJECTIVE, ascending=False, na_position="last")
    return table.reset_index(drop=True)


def trial_dir(result) -> str:
    """The trial's folder name, which its MLflow run carries as a tag (runs_by_trial's key)."""
    return Path(result.path).name
