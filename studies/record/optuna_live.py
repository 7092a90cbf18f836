"""The Optuna record kept while a study runs, so that optuna-dashboard follows it.

A Tune callback (after the MLflow one, so that a trial's run exists when its Optuna trial is made) adds
each trial to the persisted study when it starts: RUNNING, with its searched values, its Ray trial id and
its MLflow run id as user attributes. Optuna numbers trials in the order they are added; they are added in
the order Ray made them (a trial made earlier but started later is added first as WAITING), which is how
Ray, MLflow and trials.csv number them ("trial N"), so all agree. Each epoch's objective is an intermediate value; at its end a
trial is COMPLETE (its best epoch's objective), PRUNED (ASHA stopped it) or FAIL (its error as a user
attribute), as optuna_record.py records a finished study.

Not OptunaSearch's own storage=: the searcher tells Optuna a trial ASHA stopped as COMPLETE with its last
epoch's value (not PRUNED, not its best epoch), keeps no error, no run id, and no intermediate values in a
Pareto study. The record is found again by Ray trial id, so --resume goes on with the same trials.
"""
from __future__ import annotations

import uuid
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from ray import tune

from studies.design.settings import StudySettings, trial_constants
from studies.design.spaces import distributions
from studies.record.optuna_record import (
    TrialRecord,
    error_line,
    new_study,
    optuna_storage_uri,
    plain,
    trial_ending,
    write_study,
)
from studies.record.tracking import TRIAL_TAG, trial_error_text
from studies.trials.trainable import EPOCH, OBJECTIVE, ended_early, trial_config

RECORD_ATTR = "antimetric:record"  # the study's system attribute: the id of the Tune experiment keeping it
RAY_TRIAL, MLFLOW_RUN = "ray_trial_id", "mlflow_run_id"  # the trial's user attributes
NOT_RESUMED = "the driver died before Ray saved this trial; not resumed"  # as its MLflow run says


def record_callback(settings: StudySettings, experiment_id: str, n_classes: int) -> OptunaRecordCallback:
    """The callback that keeps a study's Optuna record beside its MLflow store (optuna_storage_uri)."""
    fixed = trial_config(trial_constants(settings)).to_flat()
    return OptunaRecordCallback(optuna_storage_uri(settings), settings.experiment,
                                distributions(settings.space, n_classes, fixed), settings.pareto_cost,
                                settings.tracking_uri, experiment_id)


class OptunaRecordCallback(tune.Callback):
    """Keeps the study's Optuna record in `storage` (a URL) as the trials start, report and end. A new
    study's record replaces an older one of the same name; the study resumed goes on with its own."""

    def __init__(self, storage: str, study_name: str, distributions: dict[str, BaseDistribution],
                 cost: str | None = None, tracking_uri: str | None = None, experiment_id: str | None = None) -> None:
        self.storage_url = storage
        self.study_name = study_name
        self.distributions = distributions
        self.cost = cost  # a Pareto study's second objective
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id  # where the trials' runs are
        self.record_id = uuid.uuid4().hex  # pickled with the experiment: --resume finds its record by it
        self._storage: BaseStorage | None = None
        self._study_id: int | None = None
        self._trials: dict[str, int] = {}  # Optuna trial id per Ray trial id

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment state
        return {**self.__dict__, "_storage": None, "_study_id": None, "_trials": {}}

    @property
    def storage(self) -> BaseStorage:
        if self._storage is None:
            self._storage = optuna.storages.get_storage(self.storage_url)
        return self._storage

    @property
    def study_id(self) -> int:
        if self._study_id is None:
            self._study_id = open_record(self.storage, self.study_name, self.record_id, self.cost)
            self._trials = trial_ids(self.storage, self._study_id)
        return self._study_id

    def setup(self, **info) -> None:
        _ = self.study_id

    def trial_id(self, trial, state: TrialState = TrialState.RUNNING) -> int:
        study_id = self.study_id
        if trial.trial_id not in self._trials:
            params = {k: plain(trial.config[k]) for k in self.distributions if k in trial.config}
            run_id = self._run_id(trial.trial_id) if state == TrialState.RUNNING else None
            self._trials[trial.trial_id] = start_trial(self.storage, study_id, trial.trial_id, params,
                                                       self.distributions, run_id, state)
        return self._trials[trial.trial_id]

    def _start(self, trials: list, trial) -> None:
        """Record `trial` as RUNNING, numbered as Ray numbers it ("trial N": the order Ray made the trials, which
        may not be the order they start): a trial Ray made before it that has not started yet is added first,
        WAITING, and set RUNNING when it starts."""
        for earlier in trials:
            if earlier is trial:
                break
            self.trial_id(earlier, TrialState.WAITING)
        trial_id = self.trial_id(trial)
        if self.storage.get_trial(trial_id).state == TrialState.WAITING:
            self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            run_id = self._run_id(trial.trial_id)
            if run_id:
                self.storage.set_trial_user_attr(trial_id, MLFLOW_RUN, run_id)

    def _run_id(self, ray_trial_id: str) -> str | None:
        if self.tracking_uri is None or self.experiment_id is None:
            return None
        runs = MlflowClient(self.tracking_uri).search_runs(
            [self.experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{ray_trial_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._start(trials, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if EPOCH in result and OBJECTIVE in result:
            report_epoch(self.storage, self.trial_id(trial), int(result[EPOCH]), float(result[OBJECTIVE]))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error_line(trial_error_text(trial)))

    def _end(self, trial, error: str | None) -> None:
        trial_id = self.trial_id(trial)
        objective = self.storage.get_trial(trial_id).intermediate_values
        if error is not None:
            state = TrialState.FAIL
        elif ended_early(max(objective, default=0), trial.config):
            state = TrialState.PRUNED
        else:
            state = TrialState.COMPLETE
        cost = (trial.last_result or {}).get(self.cost) if self.cost else None
        record = TrialRecord(trial.trial_id, state, 0.0, objective, error=error,
                             cost=None if cost is None else float(cost))
        end_trial(self.storage, trial_id, record, two_objectives=self.cost is not None)


def open_record(storage: BaseStorage, study_name: str, record_id: str, cost: str | None = None) -> int:
    """The id of the study `study_name` kept by the experiment `record_id`: the one in `storage`, or a new
    one in place of a study of that name another experiment (an earlier study) left."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        study_id = None
    if study_id is not None and storage.get_study_system_attrs(study_id).get(RECORD_ATTR) == record_id:
        return study_id
    if study_id is not None:
        storage.delete_study(study_id)
    new_study(storage, study_name, cost)
    study_id = storage.get_study_id_from_name(study_name)
    storage.set_study_system_attr(study_id, RECORD_ATTR, record_id)
    return study_id


def trial_ids(storage: BaseStorage, study_id: int) -> dict[str, int]:
    """Optuna trial id per Ray trial id of the trials recorded."""
    return {t.user_attrs[RAY_TRIAL]: storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            for t in storage.get_all_trials(study_id, deepcopy=False) if RAY_TRIAL in t.user_attrs}


def start_trial(storage: BaseStorage, study_id: int, ray_trial_id: str, params: dict[str, Any],
                distributions: dict[str, BaseDistribution], mlflow_run_id: str | None,
                state: TrialState = TrialState.RUNNING) -> int:
    """A RUNNING trial (or a WAITING one, made but not started), numbered next; its Optuna trial id. Its user
    attribute `epochs` comes at its end (its intermediate values say how far it got meanwhile)."""
    attrs = {RAY_TRIAL: ray_trial_id, **({MLFLOW_RUN: mlflow_run_id} if mlflow_run_id else {})}
    template = optuna.trial.create_trial(
        state=state, params={k: v for k, v in params.items() if k in distributions},
        distributions={k: d for k, d in distributions.items() if k in params}, user_attrs=attrs)
    return storage.create_new_trial(study_id, template_trial=template)


def report_epoch(storage: BaseStorage, trial_id: int, epoch: int, objective: float) -> None:
    """An epoch's objective as the intermediate value at step=epoch (a later report of an epoch replaces
    the earlier one). A trial the record ended already is left as it is."""
    try:
        storage.set_trial_intermediate_value(trial_id, epoch, objective)
    except UpdateFinishedTrialError:
        pass


def end_trial(storage: BaseStorage, trial_id: int, record: TrialRecord, two_objectives: bool = False) -> None:
    """End a RUNNING trial as the record says (optuna_record.trial_ending), with the record's epochs the trial
    lacks. A trial ended already keeps its end."""
    stored = storage.get_trial(trial_id)
    if stored.state.is_finished():
        return
    state, values, error = trial_ending(record, two_objectives)
    for epoch, value in sorted(record.objective.items()):
        if stored.intermediate_values.get(epoch) != value:
            storage.set_trial_intermediate_value(trial_id, epoch, value)
    storage.set_trial_user_attr(trial_id, "epochs", max([*record.objective, *stored.intermediate_values], default=0))
    if error:
        storage.set_trial_user_attr(trial_id, "error", error)
    storage.set_trial_state_values(trial_id, state, values)


def finish_study(records: list[TrialRecord], storage: str, study_name: str,
                 distributions: dict[str, BaseDistribution], cost: str | None = None) -> optuna.Study:
    """The record at the study's end. Kept live (every trial of Ray's results in it), it is completed in
    place, numbers unchanged: a trial left RUNNING ends as Ray's result says, and one Ray no longer holds (a
    killed driver had not saved it) ends FAIL. Otherwise (a study begun before the record was kept live) it
    is written anew from the records (write_study)."""
    study_storage = optuna.storages.get_storage(storage)
    try:
        study_id = study_storage.get_study_id_from_name(study_name)
    except KeyError:
        study_id = None
    recorded = {} if study_id is None else trial_ids(study_storage, study_id)
    if study_id is None or not recorded or any(r.ray_trial_id not in recorded for r in records):
        return write_study(records, storage, study_name, distributions, cost)
    by_ray_id = {r.ray_trial_id: r for r in records}
    for ray_trial_id, trial_id in recorded.items():
        record = by_ray_id.get(ray_trial_id) or TrialRecord(ray_trial_id, TrialState.FAIL, 0.0, error=NOT_RESUMED)
        end_trial(study_storage, trial_id, record, two_objectives=cost is not None)
    return optuna.load_study(study_name=study_name, storage=study_storage)
