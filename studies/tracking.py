"""MLflow: one experiment per study, exactly one run per trial, and a summary run.

Runs are found again by their `trial_id` tag, not by state kept in memory, so a study that
is resumed after its driver died continues the same runs instead of opening new ones.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from studies.trainable import EPOCH, trial_config

DEFAULT_STORE = Path("mlruns")
TRIAL_TAG, TRIAL_DIR_TAG, STUDY_TAG, SUMMARY_TAG = "trial_id", "trial_dir", "study", "study_summary"
INTERRUPTED_TAG = "interrupted"  # on a run whose trial Ctrl-C stopped (KILLED until --resume continues it)
CHECKPOINT_ARTIFACT = "best_checkpoint"
_MAX_TAG = 5000  # MLflow's limit on a tag value


def default_tracking_uri(store: Path = DEFAULT_STORE) -> str:
    """SQLite in store/mlflow.db, by absolute path: trials run in their own working folders."""
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path | None = None) -> str:
    """The id of experiment `name`, created with an absolute artifact location if new."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if artifact_root is not None:
        location = (artifact_root / "artifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def ui_command(tracking_uri: str, experiment_id: str, port: int = 5000) -> str:
    return (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port {port}   "
            f"# then open http://127.0.0.1:{port}/#/experiments/{experiment_id}")


class MLflowTrialCallback(tune.Callback):
    """Logs every trial to its own MLflow run: resolved config as params, every reported metric
    at step=epoch, tags (dataset, trial id), and the run's end: FINISHED, or FAILED with the error."""

    def __init__(self, tracking_uri: str, experiment_id: str, study: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.study = study
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._logged_epoch: dict[str, int] = {}  # last epoch in MLflow per trial
        self._reopened: set[str] = set()  # trials whose run existed before this driver started

    def __getstate__(self) -> dict:  # Tune pickles callbacks with the experiment state
        return {**self.__dict__, "_client": None, "_runs": {}, "_logged_epoch": {}, "_reopened": set()}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial) -> str:
        if trial.trial_id not in self._runs:
            run_id, existed = trial_run(self.client, self.experiment_id, trial.trial_id, Path(trial.path).name,
                                        self.study, trial.config, str(trial))
            self._runs[trial.trial_id] = run_id
            history = self.client.get_metric_history(run_id, EPOCH) if existed else []
            self._logged_epoch[trial.trial_id] = int(max((m.value for m in history), default=0))
            if existed:
                self._reopened.add(trial.trial_id)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial)
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_id(trial)
        step = int(result.get(EPOCH, result.get("training_iteration", 0)))
        if trial.trial_id in self._reopened:  # the first epoch after a resume: record where it went on
            self._reopened.discard(trial.trial_id)
            self.client.set_tag(run_id, "resumed_at_epoch", str(step))
        if step <= self._logged_epoch.get(trial.trial_id, 0):
            return  # an epoch logged before the driver died, repeated from an older checkpoint
        self._logged_epoch[trial.trial_id] = step
        timestamp = int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(key, float(value), timestamp, step) for key, value in result.items()
                   if key not in ("timestamp", "time_this_iter_s") and _is_number(value)]
        self.client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        epochs = int((trial.last_result or {}).get(EPOCH, 0))
        max_epochs = int(trial.config.get("num_epochs") or 0)
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, "stopped_early", str(bool(max_epochs and epochs < max_epochs)).lower())
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        fail_run(self.client, self.run_id(trial), trial_error_text(trial))


def fail_run(client: MlflowClient, run_id: str, error: str) -> None:
    """End a run as FAILED, with the error as a tag (its end) and as error.txt (whole)."""
    client.set_tag(run_id, "error", error[-_MAX_TAG:])
    client.log_text(run_id, error, "error.txt")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def trial_run(client: MlflowClient, experiment_id: str, trial_id: str, trial_dir: str, study: str,
              config: dict[str, Any], name: str) -> tuple[str, bool]:
    """(run id, whether it existed): the trial's run from before a resume, or a new one with params and tags."""
    existing = client.search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} = '{trial_id}'", max_results=2)
    if existing:
        return existing[0].info.run_id, True
    tags = {TRIAL_TAG: trial_id, TRIAL_DIR_TAG: trial_dir, STUDY_TAG: study, "dataset": str(config.get("data_name", ""))}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    try:
        params = trial_config(config).to_flat()
    except Exception:  # an invalid config fails the trial itself; log what was asked for
        params = dict(config)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
    return run.info.run_id, False


def trial_error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return "trial failed (no error file)"


def runs_by_trial(tracking_uri: str, experiment_id: str) -> dict[str, Any]:
    """The trial runs of an experiment, by trial folder name."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([experiment_id], filter_string=f"tags.{TRIAL_TAG} != ''", max_results=50_000)
    return {run.data.tags[TRIAL_DIR_TAG]: run for run in runs}


def close_finished_runs(tracking_uri: str, experiment_id: str, statuses: dict[str, str], errors: dict[str, str]) -> None:
    """Give every run that a killed driver left RUNNING (or Ctrl-C left KILLED) its trial's end state: the
    one Ray recorded, or KILLED for a trial Ray's last saved state did not hold yet (the resumed study replaced it)."""
    client = MlflowClient(tracking_uri)
    for trial_dir, run in runs_by_trial(tracking_uri, experiment_id).items():
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


def stop_interrupted_runs(tracking_uri: str, experiment_id: str) -> None:
    """After Ctrl-C: the runs of the trials Tune stopped end KILLED, tagged `interrupted`. --resume
    finds each by its trial id and sets it RUNNING again (on_trial_start)."""
    client = MlflowClient(tracking_uri)
    for run in runs_by_trial(tracking_uri, experiment_id).values():
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, INTERRUPTED_TAG, "true")
            client.set_terminated(run.info.run_id, "KILLED")


def log_checkpoint(tracking_uri: str, run_id: str, folder: Path) -> None:
    MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), artifact_path=CHECKPOINT_ARTIFACT)


def has_artifact(tracking_uri: str, run_id: str, path: str) -> bool:
    return any(a.path == path for a in MlflowClient(tracking_uri).list_artifacts(run_id))


def log_summary(tracking_uri: str, experiment_id: str, study: str, files: dict[str, Path],
                metrics: dict[str, float], best_config: dict[str, Any]) -> str:
    """The study's summary run (one per study, reused on resume): tables, plots, best config."""
    client = MlflowClient(tracking_uri)
    existing = client.search_runs([experiment_id], filter_string=f"tags.{SUMMARY_TAG} = 'true'", max_results=1)
    if existing:
        run_id = existing[0].info.run_id
    else:
        run_id = client.create_run(experiment_id, run_name=f"{study}-summary",
                                   tags={SUMMARY_TAG: "true", STUDY_TAG: study}).info.run_id
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "best_config.json"
        path.write_text(json.dumps(best_config, indent=1, default=str))
        client.log_artifact(run_id, str(path))
    for name, file in files.items():
        client.log_artifact(run_id, str(file))
    client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items() if _is_number(v)])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

