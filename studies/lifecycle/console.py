"""What a study prints while it runs: Ray Tune's table of trials, one per interval, each trial by the name
MLflow and the Optuna record give it ("trial 3"), and none of the libraries' chatter (their warnings and
errors still show)."""
from __future__ import annotations

import os
import re

from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

from studies.compat import RAY_LOGDIR_LINE, TableReporter, lookup
from studies.record.tracking import confirm_run_name
from studies.trials.metric_names import TEST_RECALL
from studies.trials.trainable import BEST_EPOCH, BEST_OBJECTIVE, CONFIRM, EPOCH, OBJECTIVE

# Seconds between two tables: a 12-trial demo on 2 CPU cores (4 min) prints 3 or 4 of them.
REPORT_SECONDS = 60
# Rows of a table while the study runs (the running trials, then the best finished ones); the study's summary
# lists them all at its end.
TABLE_ROWS = 8
METRIC_COLUMNS = (EPOCH, OBJECTIVE, TEST_RECALL, BEST_OBJECTIVE)


def trial_name(trial) -> str:
    """Ray's name of a trial (Tune's `trial_name_creator`): "trial 3" for the search's fourth, numbered from 0 in
    the order Ray created them (trials created together may start in either order), which its MLflow run takes
    (tracking.trial_run); a confirmation run's "confirm: trial 4, repeat 0". The number is the search
    generator's count in the trial's experiment tag ("4_ensemble_size=..."), which Tune saves with the
    searcher's state, so the trials a resumed study adds go on counting where it stopped."""
    if CONFIRM in trial.config:
        return confirm_run_name(trial.config)
    count = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial {int(count) - 1}" if count.isdigit() else str(trial.trial_id)


def trial_dirname(trial) -> str:
    """The trial's folder: its name and Ray's id, e.g. `trial_3_914676e2` (the id keeps it unique)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", f"{trial_name(trial)}_{trial.trial_id}")


class StudyReporter(TableReporter):
    """Ray Tune's command-line table, one every REPORT_SECONDS: each trial's name, its searched values, its epoch,
    that epoch's validation and test Recall@1 and its best validation Recall@1 so far (its selected epoch's),
    finished trials best first; above it the best trial so far by that selected epoch. At the end only the
    counts (and failed trials' error files): the study's summary lists every trial."""

    def __init__(self, parameter_columns: dict[str, str]) -> None:
        super().__init__(parameter_columns=parameter_columns, metric_columns=list(METRIC_COLUMNS),
                         sort_by_metric=True, max_report_frequency=REPORT_SECONDS, max_progress_rows=TABLE_ROWS,
                         print_intermediate_tables=True)
        self.columns = dict(parameter_columns)

    def setup(self, *args, **kwargs) -> None:
        super().setup(*args, **kwargs)
        self.restart_report_clock()  # no table of trials that are all still pending

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        """The study's objective (TuneConfig's, for its scheduler) read at the trial's selected epoch."""
        return super().set_search_properties(BEST_OBJECTIVE if metric == OBJECTIVE else metric, mode)

    def report(self, trials, done: bool, *sys_info: str) -> None:
        self.show_intermediate_tables(not done)
        best, metric = self.best_trial(trials)  # Ray's own line names the trial by its id: this one by its name
        if best is not None:
            values = ", ".join(f"{label}={_short(lookup(key, best.config))}" for key, label in self.columns.items())
            sys_info = (*sys_info, f"Best trial so far: {best}, {metric}={best.last_result[metric]:.4f} at epoch "
                                   f"{best.last_result.get(BEST_EPOCH, '?')}" + (f" ({values})" if values else ""))
        text = self.table_text(trials, done, *sys_info)
        # Ray's "Result logdir" is its staging folder in the Ray session, which the study removes at its end
        self.print_text("\n".join(line for line in text.splitlines() if not line.startswith(RAY_LOGDIR_LINE)))


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def parameter_columns(searched: list[str], confirm: bool = False) -> dict[str, str]:
    """The table's columns of searched values (in a confirmation run's config, under CONFIRM's values)."""
    return {(f"{CONFIRM}/values/{key}" if confirm else key): key for key in searched}


def quiet_console() -> None:
    """Ray's table reporter (StudyReporter) rather than its newer output, which prints a box of every trial's
    config and result as it starts and ends; no progress bars of MLflow's artifact downloads. A variable the
    caller set is kept."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, "false")
