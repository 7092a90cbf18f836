"""`antimetric train --tracking-uri`: a plain run recorded in MLflow as a study's trial is (record/tracking.py), so that
single runs and studies sit side by side in one experiment (by default the dataset's, `<dataset>-study`).

The run gets the resolved config as params (what was auto as the run chose it), every epoch's metrics at
step=epoch, the selected epoch's again as best_*, the tags `dataset` and `run_dir`, and at its end the run
folder's best.pt (and retrievals.png, if there) as the artifacts best_checkpoint/; it ends FINISHED, FAILED
with the error, or KILLED after Ctrl-C. `train --resume RUN_DIR` continues the MLflow run of RUN_DIR.

The store is checked before training starts, but the run is made when the first epoch ends (or when
training fails), so that bad input (a dataset not found, a meta-class size the classes do not allow: the
core finds these once it reads the data) is an error on the command line and leaves no run behind.
The core reaches this class through the entry point `run_tracker` of the group `antimetric.extensions`
(pyproject.toml; antimetric/base/extensions.py).
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from antimetric.errors import AntimetricError, ConfigError, DatasetLayoutError, RunInterrupted
from antimetric.training.config import RunConfig, resolve
from antimetric.training.decisions import split_recorded
from antimetric.training.loop import EpochCallback, EpochResult, FitResult
from antimetric.training.run_folder import BEST_FILE, CONFIG_FILE, RETRIEVALS_FILE, OutputError
from studies.design.settings import default_experiment
from studies.lifecycle.checks import open_tracking_experiment
from studies.record.tracking import (
    CHECKPOINT_ARTIFACT,
    INTERRUPTED_TAG,
    config_params,
    default_tracking_uri,
    epoch_metrics,
    fail_run,
    local_artifact_root,
    resolved_params,
    trial_metrics,
)
from studies.trials.trainable import EPOCH, reported

RUN_DIR_TAG = "run_dir"
CHECKPOINT_FILES = (BEST_FILE, RETRIEVALS_FILE)  # the best epoch's weights and retrieval grid, as a trial's
BAD_INPUT = (ConfigError, DatasetLayoutError, OutputError)  # what the user must fix: no run is recorded for it


class RunTracker:
    """One `antimetric train` run in MLflow. Made before training starts (the store is checked then);
    `callback(inner)` is fit's epoch callback; `finish(result)` or `end(error)` closes the run."""

    def __init__(self, tracking_uri: str | None, experiment: str | None, config: RunConfig | None = None, *,
                 resume_dir: Path | None = None) -> None:
        """tracking_uri None or "": the studies' store (mlruns/mlflow.db); experiment None: `<dataset>-study`;
        config: the new run's, or None with resume_dir, the folder `train --resume` continues."""
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.resume_dir = None if resume_dir is None else Path(resume_dir).resolve()
        self.config = resolve(config if self.resume_dir is None else run_folder_config(self.resume_dir))
        self.experiment = experiment or default_experiment(self.config.data.data_name)
        self.experiment_id = open_tracking_experiment(self.tracking_uri, self.experiment,
                                                      local_artifact_root(self.tracking_uri))
        self.client = MlflowClient(self.tracking_uri)
        self.run_id: str | None = None  # made by open_run
        self._earlier = self._earlier_run()
        self._first_epoch = True

    def open_run(self, run_dir: Path | None = None) -> str:
        """The run's id; the run is made (named after its run folder, when known) or the earlier one of a
        resumed run folder found, and set RUNNING, on the first call."""
        if self.run_id is None:
            self.run_id = self._earlier or self._new_run(run_dir)
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return self.run_id

    def _earlier_run(self) -> str | None:
        """The MLflow run of the run folder `train --resume` continues, if it was recorded."""
        if self.resume_dir is None:
            return None
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.{RUN_DIR_TAG} != ''",
                                       max_results=50_000)
        return next((run.info.run_id for run in runs if run.data.tags[RUN_DIR_TAG] == str(self.resume_dir)), None)

    def _new_run(self, run_dir: Path | None) -> str:
        data_name = self.config.data.data_name
        run_dir = self.resume_dir or (None if run_dir is None else Path(run_dir).resolve())
        tags = {"dataset": data_name}
        if run_dir is not None:
            tags[RUN_DIR_TAG] = str(run_dir)
        name = run_dir.name if run_dir else self.config.run_name or f"train {data_name}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.client.log_batch(run.info.run_id, params=config_params(self.config.to_flat()))
        return run.info.run_id

    def describe(self) -> str:
        """Where the run is recorded, as the CLI prints it."""
        return f"MLflow run {self.run_id} in experiment {self.experiment} at {self.tracking_uri}"

    def callback(self, inner: EpochCallback | None = None) -> EpochCallback:
        """fit's on_epoch_end: the epoch to MLflow, then `inner` (whose answer, stop or not, is kept)."""
        def on_epoch_end(result: EpochResult, save_checkpoint) -> bool | None:
            self.log_epoch(result)
            return inner(result, save_checkpoint) if inner is not None else None
        return on_epoch_end

    def log_epoch(self, result: EpochResult) -> None:
        run_id = self.open_run(result.run_dir)
        values = trial_metrics(reported(result))  # the names and numbers a trial's run gets
        params = []
        if self._first_epoch:  # what the run chose where its config said auto
            params = resolved_params(result.decisions.as_dict(), self.client.get_run(run_id).data.params)
            if self._earlier is not None:
                self.client.set_tag(run_id, "resumed_at_epoch", str(result.epoch))
        self._first_epoch = False
        self.client.log_batch(run_id, metrics=epoch_metrics(values, int(values[EPOCH]), int(time.time() * 1000),
                                                            result.is_best), params=params)

    def finish(self, result: FitResult) -> None:
        """The run folder and its best checkpoint in MLflow; FINISHED."""
        self.open_run()
        self._keep_run_folder(Path(result.run_dir))
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))

    def end(self, error: BaseException) -> None:
        """After `error` stopped the run: KILLED for Ctrl-C (with the checkpoint of the epochs kept, which
        `train --resume` continues), else FAILED with the error. Before the first epoch ended, Ctrl-C and bad
        input record nothing."""
        if self.run_id is None and isinstance(error, (KeyboardInterrupt, *BAD_INPUT)):
            return
        self.open_run()
        if isinstance(error, KeyboardInterrupt):
            if isinstance(error, RunInterrupted):
                self._keep_run_folder(Path(error.run_dir))
            self.client.set_tag(self.run_id, INTERRUPTED_TAG, "true")
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.KILLED))
            return
        text = str(error) if isinstance(error, AntimetricError) else "".join(traceback.format_exception(error))
        fail_run(self.client, self.run_id, text)

    def _keep_run_folder(self, run_dir: Path) -> None:
        run_dir = run_dir.resolve()
        self.client.set_tag(self.run_id, RUN_DIR_TAG, str(run_dir))
        self.client.update_run(self.run_id, name=run_dir.name)
        for name in CHECKPOINT_FILES:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name), CHECKPOINT_ARTIFACT)


def run_folder_config(run_dir: Path) -> RunConfig:
    """The config a run folder was trained with (its config.json)."""
    try:
        asked, _ = split_recorded(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")))
        return RunConfig.from_flat(asked)
    except (OSError, ValueError, AttributeError) as error:
        raise ConfigError(f"--resume: cannot read {run_dir / CONFIG_FILE} ({error}); pass the folder of a run "
                          "that finished an epoch") from None
