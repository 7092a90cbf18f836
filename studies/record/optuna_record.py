"""A study's trials as an Optuna study in a persisted storage, in the order they started.

Optuna numbers trials in the order they are added, and its optimisation history, timeline and
dashboard read that order as time. The record holds every trial: those ASHA stopped (PRUNED) and
those that errored (FAIL) as well as those that ran all their epochs (COMPLETE). The storage is a
SQLite file beside the MLflow store, read by `optuna.load_study` and `optuna-dashboard`. A study keeps
it while it runs (optuna_live.py); this module makes a record from Ray's results (write_study), for
a study begun before the record was kept live, and says how each trial ends (trial_ending).
"""
from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from ray.tune.result import EXPR_PARAM_FILE

from studies.design.settings import StudySettings
from studies.trials.trainable import EPOCH, OBJECTIVE, ended_early

STORAGE_FILE = "optuna.db"


@dataclass(frozen=True)
class TrialRecord:
    """One Ray trial as Optuna records it; plain data, so the record is built and tested without Ray."""

    ray_trial_id: str
    state: TrialState  # COMPLETE: ran all its epochs; PRUNED: stopped early by ASHA; FAIL: errored
    started: float  # Unix time the trial started: Optuna numbers the trials in this order
    objective: dict[int, float] = field(default_factory=dict)  # OBJECTIVE per epoch (epoch -> value)
    params: dict[str, Any] = field(default_factory=dict)  # the searched keys' values
    error: str | None = None  # the error's last line, for FAIL
    ended: float | None = None  # Unix time of its last report
    cost: float | None = None  # a Pareto study's second objective (its --cost), as the trial reported it


def optuna_storage_uri(settings: StudySettings) -> str:
    """sqlite:///DIR/optuna.db beside a local SQLite MLflow store (sqlite:///DIR/mlflow.db); for any
    other tracking URI (a server), in the study's own folder beside Ray's state."""
    if settings.tracking_uri.startswith("sqlite:///"):
        mlflow_db = Path(settings.tracking_uri[len("sqlite:///"):].split("?", 1)[0])
        return f"sqlite:///{mlflow_db.parent.absolute() / STORAGE_FILE}"
    return f"sqlite:///{settings.experiment_path.absolute() / STORAGE_FILE}"


def load_command(settings: StudySettings) -> str:
    """One line that opens the recorded study, for the printed summary."""
    storage = optuna_storage_uri(settings)
    return f"optuna.load_study(study_name={settings.experiment!r}, storage={storage!r})   # or: optuna-dashboard {storage}"


def trial_records(results: Iterable, searched: list[str], cost: str | None = None) -> list[TrialRecord]:
    """Records of Ray Tune results (ray.tune.Result: .config, .metrics, .metrics_dataframe, .error).

    A trial started when it first reported less the time it had run (Ray's timestamp and time_total_s,
    both kept across --resume in the trial's results file); one that never reported, when its trainable
    started (the timestamp Ray fills in its metrics then) or else with the trial Ray created before it
    (Ray lists trials in the order it created them, which is the order it starts them). Ray's timestamp
    is in whole seconds, so a start less than a second before the previous trial's is taken as equal
    to it, and Ray's order decides. An epoch reported twice, as a trial resumed from an older
    checkpoint does, keeps its later value. `cost`: the column of a Pareto study's second objective."""
    records = []
    previous_start = 0.0
    for result in results:
        metrics, config = result.metrics or {}, _config(result)
        frame = result.metrics_dataframe
        objective: dict[int, float] = {}
        started = ended = cost_value = None
        if frame is not None and len(frame):
            if cost in frame and frame[cost].notna().any():
                cost_value = float(frame[cost].dropna().iloc[-1])
            if OBJECTIVE in frame and EPOCH in frame:
                rows = frame[[EPOCH, OBJECTIVE]].dropna(subset=[EPOCH])
                objective = {int(epoch): float(value) for epoch, value in zip(rows[EPOCH], rows[OBJECTIVE])}
            if "timestamp" in frame:
                started = _started(frame.iloc[0])
                ended = float(frame["timestamp"].iloc[-1])
        if started is None and metrics.get("timestamp") is not None:
            started = _started(metrics)
        if started is None or previous_start - 1 < started < previous_start:
            started = previous_start  # Ray's timestamps are whole seconds: within one, Ray's order decides
        previous_start = started
        if result.error:
            state, error = TrialState.FAIL, error_line(result.error)
        elif ended_early(max(objective, default=0), config):
            state, error = TrialState.PRUNED, None
        else:
            state, error = TrialState.COMPLETE, None
        records.append(TrialRecord(ray_trial_id=str(metrics.get("trial_id", "")), state=state, started=started,
                                   objective=objective, params={k: plain(config[k]) for k in searched if k in config},
                                   error=error, ended=ended, cost=cost_value))
    return records


def _config(result) -> dict[str, Any]:
    """The trial's config: from its last report, or, for a trial that never reported (Ray keeps no
    metrics of it across --resume), from the params.json Ray wrote in its folder when it started."""
    if result.config:
        return result.config
    try:
        with result.filesystem.open_input_stream(f"{result.path}/{EXPR_PARAM_FILE}") as stream:
            return json.loads(stream.read())
    except (OSError, ValueError):
        return {}


def _started(report) -> float:
    return float(report["timestamp"]) - float(report.get("time_total_s") or 0.0)


def error_line(error: BaseException | str) -> str:
    """An error's last line (a traceback's is the exception), what Optuna keeps as a FAIL trial's `error`."""
    lines = str(error).strip().splitlines()
    return lines[-1][:200] if lines else type(error).__name__


def plain(value: Any) -> Any:
    """A config value as Optuna stores a param: a numpy scalar as its Python value."""
    return value.item() if hasattr(value, "item") else value


def write_study(records: list[TrialRecord], storage: str, study_name: str,
                distributions: dict[str, BaseDistribution], cost: str | None = None) -> optuna.Study:
    """The Optuna study `study_name` in `storage`, made anew from the records in the order the trials
    started (a resumed study writes all its trials again, so the old record is deleted, never added to).
    Every trial is built first: a record Optuna refuses leaves the previous study in place. With `cost`
    (a Pareto study), two directions: maximise OBJECTIVE, minimise the cost."""
    trials = [frozen_trial(record, distributions, two_objectives=cost is not None)
              for record in sorted(records, key=lambda r: r.started)]
    try:
        optuna.delete_study(study_name=study_name, storage=storage)
    except KeyError:  # none yet
        pass
    study = new_study(storage, study_name, cost)
    study.add_trials(trials)
    return study


def new_study(storage: str | BaseStorage, study_name: str, cost: str | None = None) -> optuna.Study:
    """An empty study of the objective (and, with `cost`, a Pareto study's cost), its values named."""
    names = [OBJECTIVE] if cost is None else [OBJECTIVE, cost]
    with quiet_optuna():
        study = optuna.create_study(study_name=study_name, storage=storage,
                                    directions=["maximize", "minimize"][:len(names)])
    with warnings.catch_warnings():  # experimental, and what the dashboard labels values with
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
    return study


def trial_ending(record: TrialRecord, two_objectives: bool = False
                 ) -> tuple[TrialState, list[float] | None, str | None]:
    """(state, values, error) a record ends with in Optuna: a COMPLETE one's value is its best epoch's
    objective (and, with two_objectives, its cost second); one with nothing to rank it by is a FAIL."""
    state, error = record.state, record.error
    finite = [v for v in record.objective.values() if math.isfinite(v)]
    if state == TrialState.COMPLETE and not finite:
        state, error = TrialState.FAIL, error or f"no finite {OBJECTIVE} reported"
    if state == TrialState.COMPLETE and two_objectives and (record.cost is None or not math.isfinite(record.cost)):
        state, error = TrialState.FAIL, error or "no cost reported"
    values = None
    if state == TrialState.COMPLETE:
        values = [max(finite), record.cost] if two_objectives else [max(finite)]
    return state, values, error


def frozen_trial(record: TrialRecord, distributions: dict[str, BaseDistribution],
                 two_objectives: bool = False) -> FrozenTrial:
    """The Optuna trial of a record: a COMPLETE one's value is its best epoch's objective (and, with
    two_objectives, its cost second); a PRUNED one has its intermediate values and no value; a FAIL one
    its error as the user attribute `error`."""
    state, values, error = trial_ending(record, two_objectives)
    user_attrs: dict[str, Any] = {"ray_trial_id": record.ray_trial_id, "epochs": max(record.objective, default=0)}
    if error:
        user_attrs["error"] = error
    trial = optuna.trial.create_trial(
        state=state, values=values,
        params={k: v for k, v in record.params.items() if k in distributions},
        distributions={k: d for k, d in distributions.items() if k in record.params},
        user_attrs=user_attrs, intermediate_values=dict(sorted(record.objective.items())))
    trial.datetime_start = datetime.fromtimestamp(record.started)
    trial.datetime_complete = datetime.fromtimestamp(max(record.started, record.ended or record.started))
    return trial


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines kept out (a study made says "A new study created in memory/RDB"); its warnings kept."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
