"""Every private API, undocumented file or format of Ray, MLflow and Optuna that the studies rely on, in one place.

Each name says what it works around and the version it was read from (TESTED_WITH, the pins of pyproject.toml's
`studies` extra). tests/studies/test_compat.py checks each against the installed libraries and names this module's
name to update when one changes. The rest of `studies/` uses these names, never the libraries' internals.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray._private.ray_constants as ray_constants
from ray import tune
from ray._raylet import PlacementGroupID
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback  # noqa: F401 (used by train_driver)
from ray.tune.schedulers import ASHAScheduler
from ray.tune.utils.util import unflattened_lookup
from ray.util import get_current_placement_group, placement_group_table
from ray.util.placement_group import PlacementGroup, remove_placement_group

# The versions every workaround below was read from and is tested with; pyproject.toml pins the same.
TESTED_WITH = {"ray": "2.60.0", "mlflow": "3.17.2", "optuna": "5.0.0"}

# --- Ray ------------------------------------------------------------------------------------------------

# ray 2.60.0: Ray's session folder keeps its Tune staging copies of trial folders and state files in this
# subfolder (ray.train.constants._get_ray_train_session_dir); a local study removes it at its end.
RAY_STAGING_FOLDER = "artifacts"
# ray 2.60.0: the file names Tune saves its experiment and searcher state under in the experiment folder
# (TuneController.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL); it restores the newest name (max()).
EXPERIMENT_STATE_PREFIX, EXPERIMENT_STATE_SUFFIX = "experiment_state-", ".json"
SEARCHER_STATE_PREFIX, SEARCHER_STATE_SUFFIX = "searcher-state-", ".pkl"
EXPERIMENT_STATE_GLOB = f"{EXPERIMENT_STATE_PREFIX}*{EXPERIMENT_STATE_SUFFIX}"
SEARCHER_STATE_GLOB = f"{SEARCHER_STATE_PREFIX}*{SEARCHER_STATE_SUFFIX}"
# ray 2.60.0: the statuses of an ended trial in the experiment state (Trial.TERMINATED, Trial.ERROR)
ENDED_STATUSES = ("TERMINATED", "ERROR")


def keep_ray_on_localhost() -> None:
    """ray 2.60.0: Ray binds its ports and registers the node on the machine's IP unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0. It reads the variable once, when imported, into the private
    `ray._private.ray_constants.ENABLE_RAY_CLUSTER`, so both the variable (for the processes Ray starts) and
    that constant (for this one) are set. Call before ray.init."""
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


class StateSaveHook(tune.Callback):
    """A Tune callback told, at each of Tune's saves of its state, where the staged files are while they are whole.

    ray 2.60.0 (TuneController.save_to_dir, undocumented order): a save writes the experiment state and the
    searcher's state into the driver's staging folder, then asks the callbacks for their state (get_state), then
    copies the folder into the experiment folder in a thread, file by file. get_state is thus the moment both staged
    files are whole. The staging folder is a trial's StorageContext.experiment_driver_staging_path (private); it is
    the controller's (TuneController._restore_trials keeps the restored trials' one). Local storage only."""

    def __init__(self) -> None:
        self._paths: tuple[Path, Path] | None = None

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._paths is None and trials:
            storage = trials[0].storage
            if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
                self._paths = (Path(storage.experiment_driver_staging_path), Path(storage.experiment_fs_path))

    def get_state(self) -> None:
        if self._paths is not None and self._paths[0].is_dir():
            self.on_state_saved(*self._paths)
        return None  # no state of its own for Tune to save

    def on_state_saved(self, staging: Path, experiment_path: Path) -> None:
        raise NotImplementedError


def is_experiment_state(file_name: str) -> bool:
    return file_name.startswith(EXPERIMENT_STATE_PREFIX) and file_name.endswith(EXPERIMENT_STATE_SUFFIX)


def ended_trial_ids(experiment_state: str | bytes) -> set[str]:
    """The ids of the trials an experiment state file's text records as ended. ray 2.60.0's format (undocumented:
    TuneController.save_to_dir): a JSON object whose `trial_data` lists [trial state as JSON text, run metadata]
    pairs, each trial state with `trial_id` and `status`. Raises ValueError, KeyError or TypeError on another."""
    pairs = json.loads(experiment_state)["trial_data"]
    states = [json.loads(trial_state) for trial_state, _ in pairs]
    return {state["trial_id"] for state in states if state.get("status") in ENDED_STATUSES}


def trial_storage(trial) -> tuple[Any, str, str]:
    """(pyarrow filesystem, experiment folder, trial folder) of a Tune trial's storage. ray 2.60.0: `Trial.storage`
    is a ray.train._internal.storage.StorageContext (a private class) with these three attributes."""
    storage = trial.storage
    return storage.storage_filesystem, storage.experiment_fs_path, storage.trial_fs_path


def lookup(key: str, values: dict[str, Any]) -> Any:
    """`values[key]`, where a "/" in `key` goes one dict deeper (Tune's names of nested config columns); None if
    missing. ray 2.60.0: ray.tune.utils.util.unflattened_lookup, not public API."""
    return unflattened_lookup(key, values, default=None)


@contextlib.contextmanager
def tune_interrupt_watch(second_interrupt: Callable) -> Iterator[Callable[[], bool]]:
    """While Tuner.fit runs inside: yields a function saying whether Ctrl-C (SIGINT) stopped it.

    ray 2.60.0 (ray.tune.tune._setup_signal_catching, undocumented): on SIGINT Tune stops its trials, saves the
    experiment state and returns as if the study had ended, telling no one; but its handler puts back the one it
    replaced, which is how we know. `second_interrupt` is that handler: a second Ctrl-C calls it at once.
    TUNE_DISABLE_SIGINT_HANDLER (a caller's) is dropped so that Tune installs its handler."""
    os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    previous = signal.signal(signal.SIGINT, second_interrupt)
    try:
        yield lambda: signal.getsignal(signal.SIGINT) is second_interrupt
    finally:
        signal.signal(signal.SIGINT, previous)


# ray 2.60.0: Tune's logger and the starts of the lines it logs at the end of Tuner.fit that a study replaces by
# its own (ray/tune/tune.py): its advice on Ctrl-C, Python's Tuner.restore(...) (the study prints its --resume
# command), and its note that it wrote the result files and state.
TUNE_LOGGER = "ray.tune.tune"
TUNE_RESUME_ADVICE = "Tuner.restore("
TUNE_WROTE_STATE = "Wrote the latest version of all result"


class _HideTuneResumeAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return TUNE_RESUME_ADVICE not in message and not message.startswith(TUNE_WROTE_STATE)


@contextlib.contextmanager
def hide_tune_resume_advice() -> Iterator[None]:
    """Tune's lines on how to restore and where it wrote its state off, for a moment (a filter on their text)."""
    quiet = _HideTuneResumeAdvice()
    logging.getLogger(TUNE_LOGGER).addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger(TUNE_LOGGER).removeFilter(quiet)


def asha_rungs(scheduler: ASHAScheduler) -> list[tuple[float, dict[str, float]]]:
    """(milestone, {trial id: value}) of an ASHAScheduler's one bracket (its default): Ray's own lists, which a
    caller may change in place. ray 2.60.0: `ASHAScheduler._brackets`, each a `_Bracket` with `_rungs`."""
    (bracket,) = scheduler._brackets
    return bracket._rungs


# ray 2.60.0 (DeveloperAPI, the Train-in-Tune user guide's): a Ray Train callback that hands rank 0's metrics of every
# ray.train.report to the Tune trial that fits the trainer, with the reported checkpoint's path (on the Train run's
# storage) under TRAIN_CHECKPOINT_PATH; it must be built inside that trial. Tune's checkpoint of the trial stays None.
TRAIN_CHECKPOINT_PATH = CHECKPOINT_PATH_KEY


def current_placement_group_id() -> str | None:
    """The hex id of the placement group this worker (task or actor) runs in, or None."""
    group = get_current_placement_group()
    return group.id.hex() if group is not None else None


def remove_placement_group_by_id(hex_id: str) -> bool:
    """Remove the placement group of `hex_id` (current_placement_group_id), unless already removed or unknown;
    whether it was there. ray 2.60.0: a PlacementGroup is built from its PlacementGroupID (ray._raylet, private);
    placement_group_table's `state` is "REMOVED" once removed."""
    if placement_group_table().get(hex_id, {}).get("state") in (None, "REMOVED"):
        return False
    remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id))))
    return True


# ray 2.60.0: the start of the line of CLIReporter's text that names Tune's staging folder of the experiment
RAY_LOGDIR_LINE = "Result logdir:"


class TableReporter(tune.CLIReporter):
    """Ray's CLIReporter with the private parts a subclass needs under public names. ray 2.60.0: TuneReporterBase's
    `_current_best_trial`, `_progress_str`, `_last_report_time`, `_print_intermediate_tables`, and CLIReporter's
    `_print`. Ray's own "Current best trial" line (which names the trial by its id) is left out: a subclass
    writes its own from best_trial()."""

    def _current_best_trial(self, trials):  # what Ray's _progress_str calls for its best-trial line
        return None, self._metric

    def best_trial(self, trials: list) -> tuple[Any, str | None]:
        """(the trial best by the reporter's metric and mode, or None; that metric)."""
        return super()._current_best_trial(trials)

    def table_text(self, trials: list, done: bool, *sys_info: str) -> str:
        """Ray's status text: time, `sys_info`, the table of trials and their errors."""
        return self._progress_str(trials, done, *sys_info)

    def print_text(self, text: str) -> None:
        self._print(text)

    def restart_report_clock(self) -> None:
        """The next table after a whole interval from now."""
        self._last_report_time = time.time()

    def show_intermediate_tables(self, show: bool) -> None:
        """Whether a table lists every trial (not just the counts) before the end."""
        self._print_intermediate_tables = show


# --- MLflow ---------------------------------------------------------------------------------------------

# mlflow 3.17.2's UI (read from its JS bundle, mlflow/server/js/build): an experiment tag
# `mlflow.sharedViewState.<id>` holds a saved runs-table view (columns, sort, filter), listed under the UI's
# saved views and opened by `#/experiments/<experiment>/runs?viewStateShareKey=<id>`. Without
# `workflowType=machine_learning` a fresh browser shows every experiment as a GenAI app (Overview, Traces);
# `mlflow.experimentKind` is not read while the UI's workflow switcher is on, as it is in 3.17.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# mlflow 3.17.2: the logger of its SQL store, which logs each error it re-raises with its whole traceback
MLFLOW_SQL_STORE_LOGGER = "mlflow.store.db.utils"


def runs_view_tag(view_id: str, state: dict[str, Any], now_ms: int) -> tuple[str, str]:
    """(tag name, tag value) of a saved runs-table view `view_id` whose UI state is `state` (searchFilter,
    orderByKey, orderByAsc, selectedColumns, columnOrder, columnWidths): mlflow 3.17.2's UI format."""
    view = {"name": view_id, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)}
    return VIEW_TAG_PREFIX + view_id, json.dumps(view)


def runs_view_url(experiment_id: str, view_id: str, port: int) -> str:
    """The UI's address of an experiment's runs table in its saved view `view_id` (mlflow 3.17.2's UI routes)."""
    return (f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={view_id}")
