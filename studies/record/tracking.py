"""MLflow: one experiment per study, a parent run per study (study_run.py) and exactly one run per trial
nested under it.

Runs are found again by their tags (a trial's by `trial_id`), not by state kept in memory, so a study
that is resumed after its driver died continues the same runs instead of opening new ones.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TRIAL_ID

from antimetric.training.decisions import DECISION_KEYS
from studies.compat import trial_storage
from studies.design.own_data import dataset_label
from studies.design.seeds import SEED_KEYS
from studies.record.study_run import (
    BEST,
    MAX_PARAM,
    PARENT_ID_TAG,
    STUDY_TAG,
    end_study_run,
    is_number,
    log_progress,
    parent_run,
    set_runs_view,
    stopped_early,
)
from studies.record.trial_weights import (
    delete_checkpoints,
    delete_train_run,
    ended_checkpoint,
    ended_in_saved_state,
    log_ended_trial,
)
from studies.trials.metric_names import TEST, VAL
from studies.trials.trainable import CONFIRM, EPOCH, OBJECTIVE, REPORTED_AGAIN, WORLD_SIZE, trial_config, trial_cost

DEFAULT_STORE = Path("mlruns")
TRIAL_TAG, TRIAL_DIR_TAG, NUMBER_TAG = "trial_id", "trial_dir", "trial_number"
# A run's stage: a search trial (a sample of the searcher, numbered) or a confirmation run (studies/conclusions/confirm.py).
STAGE_TAG, SEARCH, CONFIRM_STAGE = "stage", "search", "confirm"
INTERRUPTED_TAG = "interrupted"  # on a run whose trial Ctrl-C stopped (KILLED until --resume continues it)
CHECKPOINT_ARTIFACT = "best_checkpoint"  # a `train --tracking-uri` run's best.pt (a trial's is in its logged model)
_MAX_TAG = 5000  # MLflow's limit on a tag value
# What Ray adds to every result (times, host, pid, counters): Ray's bookkeeping, not the trial's metrics.
RAY_KEYS = frozenset(AUTO_RESULT_KEYS) | {DONE, TRIAL_ID, EXPERIMENT_TAG, SHOULD_CHECKPOINT}
# What a trial reports once it started, logged as its run's params: its resolved decisions and, for a multi-worker
# trial, its number of workers (studies/trials/train_driver.py).
RESOLVED_KEYS = (*DECISION_KEYS, WORLD_SIZE)
# A reported metric logged under another name: `lr` is the param (the config's value), this the epoch's.
RENAMED = {"lr": "lr_epoch"}


def default_tracking_uri(store: Path = DEFAULT_STORE) -> str:
    """SQLite in store/mlflow.db, by absolute path: trials run in their own working folders."""
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Local SQLite stores keep artifacts beside the database; servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent
    return None


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path | None = None) -> str:
    """The id of experiment `name`, created with an absolute artifact location if new: under `artifact_root`,
    by default beside a local SQLite store (MLflow's own default, ./mlruns, is relative to whatever folder the
    process runs in, so a store's artifacts would land in the caller's working folder)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_root = artifact_root if artifact_root is not None else local_artifact_root(tracking_uri)
    location = None
    if artifact_root is not None:
        location = (artifact_root / "artifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


class MLflowTrialCallback(tune.Callback):
    """Logs a Tune experiment to MLflow: the study's parent run (study_run.py; found by its tags, or made
    here, as in your own Tuner) with the best objective so far and the trials done, stopped early and
    failed; and one nested run per trial, named by its number and searched values, with its resolved
    config as params, the trainable's metrics at step=epoch (not Ray's bookkeeping), the selected epoch's
    (best objective) again as best_*, tags (dataset, trial id, stopped_early), and its end: its best weights as
    its logged model, FINISHED or FAILED with the error; then its checkpoints are deleted (trial_weights.py)."""

    def __init__(self, tracking_uri: str, experiment_id: str, study: str, stage: str = SEARCH) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.study = study
        self.stage = stage  # confirmation runs are named by their configuration and repeat, and leave the
        # parent run's search progress (best objective, trials done) alone
        self._client: MlflowClient | None = None
        self._parent: str | None = None
        self._runs: dict[str, str] = {}
        self._logged_epoch: dict[str, int] = {}  # last epoch in MLflow per trial
        self._best: dict[str, float] = {}  # best objective in MLflow per trial
        self._reopened: set[str] = set()  # trials whose run existed before this driver started
        self._resolved_logged: set[str] = set()  # runs whose resolved device and workers are params
        self._ended: list = []  # ended trials whose checkpoints go once Ray's saved state says they ended

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment state
        return {**self.__dict__, "_client": None, "_parent": None, "_runs": {}, "_logged_epoch": {}, "_best": {},
                "_reopened": set(), "_resolved_logged": set(), "_ended": []}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def parent_run_id(self) -> str:
        if self._parent is None:
            self._parent, _ = parent_run(self.client, self.experiment_id, self.study)
        return self._parent

    def setup(self, **info) -> None:
        self.client.update_run(self.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def run_id(self, trial) -> str:
        if trial.trial_id not in self._runs:
            run_id, existed = trial_run(self.client, self.experiment_id, self.parent_run_id, trial, self.study,
                                        self.stage)
            self._runs[trial.trial_id] = run_id
            logged = self.client.get_run(run_id).data.metrics if existed else {}
            self._logged_epoch[trial.trial_id] = int(logged.get(EPOCH, 0))
            self._best[trial.trial_id] = logged.get(BEST + OBJECTIVE, -math.inf)
            if existed:
                self._reopened.add(trial.trial_id)
            elif self.stage == SEARCH:  # your own Tuner: its searched keys as the trials view, unless the study set one
                set_runs_view(self.client, self.experiment_id, list(searched_values(trial)), replace=False)
        return self._runs[trial.trial_id]

    def _resolved_params(self, run_id: str, result: dict[str, Any]) -> list[Param]:
        """The values a trial resolved where its config said auto, once: the run's params say what ran."""
        if run_id in self._resolved_logged or not any(key in result for key in RESOLVED_KEYS):
            return []
        self._resolved_logged.add(run_id)
        return resolved_params(result, self.client.get_run(run_id).data.params)  # a reopened run has them

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_id(trial)
        step = int(result.get(EPOCH, result.get("training_iteration", 0)))
        if trial.trial_id in self._reopened and not result.get(REPORTED_AGAIN):  # the first epoch after a resume:
            # record where it went on (not the epoch of its checkpoint, which a multi-worker trial reports again)
            self._reopened.discard(trial.trial_id)
            self.client.set_tag(run_id, "resumed_at_epoch", str(step))
        if step <= self._logged_epoch.get(trial.trial_id, 0):
            return  # an epoch logged before the driver died, repeated from an older checkpoint
        self._logged_epoch[trial.trial_id] = step
        timestamp = int(result.get("timestamp", 0) * 1000)
        values = trial_metrics(result)
        is_best = values.get(OBJECTIVE, -math.inf) > self._best[trial.trial_id]  # a new selected epoch
        if is_best:
            self._best[trial.trial_id] = values[OBJECTIVE]
        self.client.log_batch(run_id, metrics=epoch_metrics(values, step, timestamp, is_best),
                              params=self._resolved_params(run_id, result))
        if self.stage == SEARCH:
            log_progress(self.client, self.parent_run_id, trials, trial, result=result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial)
        self._keep_weights(trial, run_id)
        self.client.set_tag(run_id, "stopped_early", str(stopped_early(trial)).lower())
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        if self.stage == SEARCH:
            log_progress(self.client, self.parent_run_id, trials, trial, status="TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._keep_weights(trial, self.run_id(trial))
        fail_run(self.client, self.run_id(trial), trial_error_text(trial))
        if self.stage == SEARCH:
            log_progress(self.client, self.parent_run_id, trials, trial, status="ERROR")

    def _keep_weights(self, trial, run_id: str) -> None:
        """The ended trial's best weights to its run, and its checkpoints marked to go."""
        filesystem, _, _ = trial_storage(trial)
        log_ended_trial(self.tracking_uri, self.client.get_run(run_id),
                        ended_checkpoint(trial.checkpoint, trial.last_result, filesystem))
        self._ended.append(trial)

    def on_step_end(self, iteration, trials, **info) -> None:
        if not self._ended:
            return
        ended = ended_in_saved_state(self._ended[0])  # Ray's state file, read once for all of them
        for trial in [t for t in self._ended if t.trial_id in ended]:
            filesystem, _, folder = trial_storage(trial)
            delete_checkpoints(filesystem, folder)
            delete_train_run(filesystem, trial.last_result)
            self._ended.remove(trial)

    def on_experiment_end(self, trials, **info) -> None:
        end_study_run(self.client, self.parent_run_id, trials)


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trainable's numbers in a Tune result, under their MLflow names; not its selected epoch so far (best_*,
    for Ray's console), which epoch_metrics logs at each new selected epoch."""
    return {RENAMED.get(key, key): float(value) for key, value in result.items()
            if key not in RAY_KEYS and not key.startswith(BEST) and is_number(value)}


def epoch_metrics(values: dict[str, float], step: int, timestamp: int, is_best: bool) -> list[Metric]:
    """An epoch's metrics at step=epoch and, when it is the new selected epoch, its selected() ones as best_*."""
    metrics = [Metric(key, value, timestamp, step) for key, value in values.items()]
    if is_best:
        metrics += [Metric(BEST + key, value, timestamp, step) for key, value in selected(values).items()]
    return metrics


def config_params(flat: dict[str, Any]) -> list[Param]:
    """A run's flat config as params, but for what a run resolves when it starts (resolved_params logs those)."""
    return [Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(flat.items()) if k not in DECISION_KEYS]


def resolved_params(values: dict[str, Any], logged: dict[str, str]) -> list[Param]:
    """What a run chose where its config said auto (device, workers), unless logged already."""
    return [Param(key, str(values[key])) for key in RESOLVED_KEYS if key in values and key not in logged]


def selected(metrics: dict[str, float]) -> dict[str, float]:
    """What a trial's selected epoch is known by (best_* in MLflow): the epoch, its validation and test metrics."""
    return {key: value for key, value in metrics.items() if key == EPOCH or key.startswith((VAL, TEST))}


def trial_run_name(number: int, searched: dict[str, Any]) -> str:
    """`trial 3: ensemble_size=8, meta_class_size=5, lr=1.2e-03`: the trial's number in the order the trials
    started, from 0 as Optuna numbers trials, and the values searched for it."""
    values = ", ".join(f"{key}={_short(value)}" for key, value in searched.items())
    return f"trial {number}: {values}"[:250] if values else f"trial {number}"


def _short(value: Any) -> str:
    if isinstance(value, float) and value and not 1e-2 <= abs(value) < 1e4:
        return f"{value:.1e}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def fail_run(client: MlflowClient, run_id: str, error: str) -> None:
    """End a run as FAILED, with the error as a tag (its end) and as error.txt (whole)."""
    client.set_tag(run_id, "error", error[-_MAX_TAG:])
    client.log_text(run_id, error, "error.txt")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def searched_values(trial) -> dict[str, Any]:
    """What the searcher chose for a trial, without the seeds it sets (studies/design/seeds.py)."""
    return {k: v for k, v in (trial.evaluated_params or {}).items() if k not in SEED_KEYS}


def confirm_run_name(config: dict[str, Any]) -> str:
    """`confirm: trial 4, repeat 0`, `confirm: default, repeat 1`: a confirmation run's configuration and repeat."""
    confirm = config.get(CONFIRM, {})
    return f"confirm: {confirm.get('config', '?')}, repeat {confirm.get('repeat', '?')}"


def trial_run(client: MlflowClient, experiment_id: str, parent_id: str, trial, study: str,
              stage: str = SEARCH) -> tuple[str, bool]:
    """(run id, whether it existed): the trial's run from before a resume, or a new one nested under the
    study's parent run, with params and tags: a search trial numbered in the order the search trials
    started, a confirmation run named by its configuration and repeat."""
    existing = client.search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial.trial_id}'",
                                  max_results=2)
    if existing:
        run_id, logged = existing[0].info.run_id, existing[0].data.params
        if existing[0].data.tags.get(PARENT_ID_TAG) != parent_id:  # a run from before parent runs
            client.set_tag(run_id, PARENT_ID_TAG, parent_id)
        missing = [p for p in config_params(trial_params(trial.config)) if p.key not in logged]
        if missing:  # the driver died between making the run and logging its params
            client.log_batch(run_id, params=missing)
        return run_id, True
    config = trial.config
    tags = {TRIAL_TAG: trial.trial_id, TRIAL_DIR_TAG: Path(trial.path).name, STUDY_TAG: study, STAGE_TAG: stage,
            "dataset": dataset_label(str(config.get("data") or config.get("data_name", ""))), PARENT_ID_TAG: parent_id}
    if stage == SEARCH:
        named = re.fullmatch(r"trial (\d+)", str(trial))  # a study's trials are named by their number (lifecycle/console.py)
        number = int(named[1]) if named else len(client.search_runs(  # your own Tuner: the search trials before it
            [experiment_id], max_results=50_000,
            filter_string=f"tags.`{PARENT_ID_TAG}` = '{parent_id}' AND tags.{NUMBER_TAG} != ''"))
        tags[NUMBER_TAG] = str(number)
        name = trial_run_name(number, searched_values(trial))
    else:
        name = confirm_run_name(config)
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=config_params(trial_params(config)))  # the resolved ones as the
    return run.info.run_id, False  # trial reports them


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's run config, flat, and what it costs; for an invalid config (it fails the trial itself) what was
    asked for."""
    try:
        run_config = trial_config(config)
        return {**run_config.to_flat(), **trial_cost(run_config)}
    except Exception:
        return dict(config)


def trial_error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return "trial failed (no error file)"


def runs_by_trial(tracking_uri: str, experiment_id: str, stage: str | None = SEARCH) -> dict[str, Any]:
    """The trial runs of an experiment of one stage (None: all), by trial folder name. A run from before
    stages were tagged is a search trial."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} != ''", max_results=50_000)
    return {run.data.tags[TRIAL_DIR_TAG]: run for run in runs
            if stage is None or run.data.tags.get(STAGE_TAG, SEARCH) == stage}


def close_finished_runs(tracking_uri: str, runs: dict[str, Any], statuses: dict[str, str],
                        errors: dict[str, str]) -> None:
    """Give every run of `runs` (trial runs by trial folder: runs_by_trial) that a killed driver left RUNNING (or
    Ctrl-C left KILLED) its trial's end state: the one Ray recorded (`statuses`, with `errors`, by trial folder),
    or KILLED for a trial Ray's last saved state did not hold yet (the resumed study replaced it)."""
    client = MlflowClient(tracking_uri)
    for trial_dir, run in runs.items():
        interrupted = run.info.status == "KILLED" and INTERRUPTED_TAG in run.data.tags
        if run.info.status != "RUNNING" and not interrupted:
            continue
        status = statuses.get(trial_dir)
        if status == "ERROR":
            fail_run(client, run.info.run_id, errors.get(trial_dir, ""))
        elif status == "TERMINATED":
            client.set_terminated(run.info.run_id, "FINISHED")
        else:
            client.set_tag(run.info.run_id, "killed", "the driver died before Ray saved this trial; not resumed")
            client.set_terminated(run.info.run_id, "KILLED")


def stop_interrupted_runs(tracking_uri: str, experiment_id: str, study: str) -> None:
    """After Ctrl-C: the runs of the trials Tune stopped, and the study's parent run, end KILLED, tagged
    `interrupted` (Tune marks the stopped trials TERMINATED before it tells callbacks the experiment ended,
    so on_experiment_end cannot tell). --resume finds each by its tags and sets it RUNNING again."""
    client = MlflowClient(tracking_uri)
    parent, _ = parent_run(client, experiment_id, study)
    running = [run.info.run_id for run in runs_by_trial(tracking_uri, experiment_id, stage=None).values()
               if run.info.status == "RUNNING"]
    for run_id in [*running, parent]:
        client.set_tag(run_id, INTERRUPTED_TAG, "true")
        client.set_terminated(run_id, "KILLED")
