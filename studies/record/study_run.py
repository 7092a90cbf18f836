"""The study's parent run in MLflow, and the runs-table view that the printed UI link opens.

One parent run per study: made when the study starts, found again by its tags on --resume. It holds
the study's options as params, its search space, live progress metrics and, at the end, the summary;
each trial's run is nested under it (tracking.py).
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from studies.compat import KIND, KIND_TAG, VIEW_TAG_PREFIX, runs_view_tag, runs_view_url
from studies.trials.metric_names import TEST, TEST_RECALL
from studies.trials.trainable import EPOCH, OBJECTIVE, ended_early

STUDY_TAG, PARENT_TAG = "study", "study_parent"
PARENT_ID_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under the run of this id
BEST = "best_"  # a trial's selected epoch (best objective), and the study's best trial
SPACE_ARTIFACT = "search_space.json"
# The saved runs-table view the printed UI link opens (its format and the UI's address: compat.py)
VIEW_ID = "trials"
VIEW_TAG = VIEW_TAG_PREFIX + VIEW_ID
MAX_PARAM = 6000  # MLflow's limit on a param value


def parent_run(client: MlflowClient, experiment_id: str, study: str, new: bool = False) -> tuple[str, bool]:
    """(run id, whether it existed): the study's newest parent run, or a new RUNNING one (always, if `new`)."""
    if not new:
        runs = client.search_runs([experiment_id], filter_string=f"tags.{PARENT_TAG} = 'true'", max_results=1000)
        for run in runs:  # newest first; the name is compared here, so that no quote in it can break a filter
            if run.data.tags.get(STUDY_TAG) == study:
                return run.info.run_id, True
    run = client.create_run(experiment_id, run_name=study, tags={PARENT_TAG: "true", STUDY_TAG: study})
    return run.info.run_id, False


def open_study_run(tracking_uri: str, experiment_id: str, study: str, params: dict[str, Any], tags: dict[str, str],
                   space: dict[str, Any], new: bool) -> str:
    """The study's parent run, RUNNING: new for a new study (an older study of the same name keeps its
    own), found again on --resume. Params are logged once (MLflow refuses a changed one), so what
    --resume may change goes in `tags`. Also sets the experiment's trials view on the searched keys."""
    client = MlflowClient(tracking_uri)
    run_id, _ = parent_run(client, experiment_id, study, new=new)
    logged = client.get_run(run_id).data.params
    client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(params.items()) if k not in logged])
    if not any(a.path == SPACE_ARTIFACT for a in client.list_artifacts(run_id)):
        client.log_text(run_id, json.dumps(space, indent=1), SPACE_ARTIFACT)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    set_runs_view(client, experiment_id, list(space))
    return run_id


def set_runs_view(client: MlflowClient, experiment_id: str, searched: list[str], replace: bool = True) -> None:
    """The experiment's saved runs-table views, on the same columns: the selected epoch's validation and
    test Recall@1 and its number, whether ASHA stopped the trial, the searched params. `trials` lists the
    trials alone, best first (MLflow nests child runs only when the table is sorted by creation time);
    `study` is the study's run, newest first, with its trials nested under it (expanded by its + button)."""
    experiment = client.get_experiment(experiment_id)
    if not replace and VIEW_TAG in experiment.tags:
        return
    best = f"metrics.`{BEST}{OBJECTIVE}`"
    columns = [best, f"metrics.`{BEST}{TEST_RECALL}`", f"metrics.`{BEST}{EPOCH}`", "tags.`stopped_early`",
               *(f"params.`{key}`" for key in searched)]
    views = {VIEW_ID: {"searchFilter": f"tags.`{PARENT_ID_TAG}` != ''", "orderByKey": best, "orderByAsc": False},
             "study": {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False}}
    name = "attributes.`Run Name`"  # wider: a trial's name holds its searched values (widths apply in this order)
    table = {"selectedColumns": columns, "columnOrder": [name, *columns], "columnWidths": {name: 300}}
    now = int(time.time() * 1000)
    for view_id, state in views.items():
        client.set_experiment_tag(experiment_id, *runs_view_tag(view_id, {**state, **table}, now))
    if experiment.tags.get(KIND_TAG) != KIND:
        client.set_experiment_tag(experiment_id, KIND_TAG, KIND)


def runs_table_url(experiment_id: str, port: int = 5000) -> str:
    """The study's runs table, in its trials view (set_runs_view), in MLflow 3's UI."""
    return runs_view_url(experiment_id, VIEW_ID, port)


def ui_command(tracking_uri: str, experiment_id: str, port: int = 5000) -> str:
    return (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port {port}   "
            f"# then open {runs_table_url(experiment_id, port)}")


def stopped_early(trial) -> bool:
    """Whether the trial ended before its last epoch: ASHA stopped it."""
    return ended_early(int((trial.last_result or {}).get(EPOCH, 0)), trial.config)


def log_progress(client: MlflowClient, run_id: str, trials: list, trial, status: str | None = None,
                 result: dict | None = None) -> None:
    """The study's live metrics on its parent run, from Tune's trials (a resumed study counts its earlier
    trials too): the best objective so far of the trials that have not failed, at step = epochs run by
    all trials; when `trial` ends with `status`, the trials done (whole or stopped early), stopped early
    and failed, at step = trials ended. Tune records `trial`'s new `result` and end after its callbacks."""
    now = int(time.time() * 1000)
    states = {t.trial_id: status if status and t.trial_id == trial.trial_id else t.status for t in trials}
    values, epochs = [], 0
    for t in trials:
        current = result if result is not None and t.trial_id == trial.trial_id else None
        epochs += int((current or t.last_result or {}).get(EPOCH, 0))
        if states[t.trial_id] != "ERROR":
            values += [(t.metric_analysis.get(OBJECTIVE) or {}).get("max"), (current or {}).get(OBJECTIVE)]
    metrics = []
    best = max((v for v in values if is_number(v)), default=None)
    if best is not None:
        metrics.append(Metric(BEST + OBJECTIVE, float(best), now, epochs))
    if status:
        ended = [t for t in trials if states[t.trial_id] in ("TERMINATED", "ERROR")]
        done = [t for t in ended if states[t.trial_id] == "TERMINATED"]
        counts = {"trials_done": len(done), "trials_stopped_early": sum(stopped_early(t) for t in done),
                  "trials_failed": len(ended) - len(done)}
        metrics += [Metric(key, float(value), now, len(ended)) for key, value in counts.items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def end_study_run(client: MlflowClient, run_id: str, trials: list) -> None:
    """FINISHED when every trial ended, else KILLED. Tune marks the trials that Ctrl-C stopped TERMINATED
    first; a study then ends its parent run KILLED itself (tracking.stop_interrupted_runs)."""
    ended = all(t.status in ("TERMINATED", "ERROR") for t in trials)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if ended else RunStatus.KILLED))


def log_summary(tracking_uri: str, experiment_id: str, study: str, files: dict[str, Path],
                metrics: dict[str, float], best_config: dict[str, Any], tags: dict[str, str] | None = None,
                params: dict[str, Any] | None = None) -> str:
    """The end of a study, on its parent run: the tables and plots, best_config.json, the trial counts, the
    best trial's selected-epoch metrics as best_*, the untrained baseline, `tags` (its description, its
    winner: conclusions/study_note.py) and `params`. Then FINISHED. A param logged before (a study summarized again after
    --resume) is kept: MLflow refuses a changed one; a changed value is said on stderr."""
    client = MlflowClient(tracking_uri)
    run_id, _ = parent_run(client, experiment_id, study)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    logged = client.get_run(run_id).data.params
    new = {key: str(value)[:MAX_PARAM] for key, value in (params or {}).items()}
    client.log_batch(run_id, params=[Param(key, value) for key, value in sorted(new.items()) if key not in logged])
    changed = sorted(key for key, value in new.items() if key in logged and logged[key] != value)
    if changed:
        print(f"note: the study's run keeps its earlier params {', '.join(changed)} (MLflow params cannot "
              "change); its tags and description name the winner now", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "best_config.json"
        path.write_text(json.dumps(best_config, indent=1, default=str))
        client.log_artifact(run_id, str(path))
    for file in files.values():
        client.log_artifact(run_id, str(file))
    now = int(time.time() * 1000)
    values = summary_metrics(metrics)  # each at the last step of its live history, so that it is the latest
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, _last_step(client, run_id, k))
                                      for k, v in values.items() if is_number(v)])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def summary_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The summary's metrics under the parent run's names: the best trial's objective and test metrics as
    best_*, and the counts as trials_* (as log_progress logs them while the study runs: trials_done and
    trials_failed, not also their sum)."""
    names = {"stopped_early": "trials_stopped_early", "failed": "trials_failed"}
    out = {BEST + k if k == OBJECTIVE or k.startswith(TEST) else names.get(k, k): v for k, v in metrics.items()}
    if "trials" in metrics and "failed" in metrics:  # the live counts: done and failed make all the trials
        out["trials_done"] = metrics["trials"] - metrics["failed"]
    out.pop("trials", None)
    return out


def _last_step(client: MlflowClient, run_id: str, key: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, key)), default=0)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
