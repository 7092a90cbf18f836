"""How a study ends other than by its summary: Ctrl-C or SIGTERM (StudyInterrupted: --resume continues it),
a store that failed while it ran, or no trial that succeeded (StudyFailed). Either way its MLflow runs end
KILLED or FAILED, never RUNNING or FINISHED."""
from __future__ import annotations

import signal
import sys

from mlflow.tracking import MlflowClient
from ray import tune

from studies.compat import hide_tune_resume_advice, tune_interrupt_watch
from studies.design.settings import StudySettings
from studies.lifecycle.checks import STORE_ERRORS, store_failure
from studies.record.study_run import parent_run
from studies.record.tracking import fail_run, stop_interrupted_runs

_sigterm = {"received": False}  # this process's: whether SIGTERM stopped it


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the study: Tune saved its state, and --resume continues it."""


class StudyFailed(Exception):
    """The study could not go on, or ended without a trial that succeeded; `resumable`: whether --resume
    continues it."""

    def __init__(self, message: str, resumable: bool) -> None:
        super().__init__(message)
        self.resumable = resumable


def sigterm_as_ctrl_c(fresh: bool = False):
    """SIGTERM (what `timeout`, a scheduler or `docker stop` sends) goes the way Ctrl-C goes: Tune saves its
    state and stops its trials, the runs end KILLED, and the resume command is printed. Installed again after
    ray.init, which puts in its own handler (sys.exit in the middle of Tune's loop). `fresh`: forget an
    earlier SIGTERM (a new study in this process). Returns the handler it replaced."""
    if fresh:
        _sigterm["received"] = False
    return signal.signal(signal.SIGTERM, _on_sigterm)


def sigterm_received() -> bool:
    return _sigterm["received"]


def _on_sigterm(signum, frame) -> None:
    _sigterm["received"] = True
    handler = signal.getsignal(signal.SIGINT)  # Tune's while it runs, Python's (KeyboardInterrupt) else
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def fit_until_interrupted(tuner: tune.Tuner) -> tuple[tune.ResultGrid, bool]:
    """(results, interrupted): Tuner.fit, and whether Ctrl-C (SIGINT) stopped it. On SIGINT Tune stops its
    trials, saves the experiment state and returns as if the study had ended (compat.tune_interrupt_watch).
    A second Ctrl-C raises at once. Tune's own advice on resuming is hidden: the study prints its command."""

    def second_interrupt(signum, frame):
        raise StudyInterrupted

    with tune_interrupt_watch(second_interrupt) as interrupted, hide_tune_resume_advice():
        results = tuner.fit()
        return results, interrupted()


def stop_runs(settings: StudySettings, experiment_id: str) -> None:
    """The study's running trial runs and its parent run KILLED, as far as the MLflow store still answers."""
    try:
        stop_interrupted_runs(settings.tracking_uri, experiment_id, settings.experiment)
    except STORE_ERRORS as error:
        print(f"note: the study's MLflow runs could not be marked KILLED ({store_failure(error)})", file=sys.stderr)


def check_some_trial_succeeded(settings: StudySettings, results, experiment_id: str) -> None:
    """A study whose every trial failed has nothing to show: its parent run ends FAILED and StudyFailed
    says why, from the first trial that failed."""
    if not len(results) or any(not result.error for result in results):
        return
    first = str(next(result.error for result in results)).strip().splitlines() or ["no error recorded"]
    message = f"no trial of the study succeeded (all {len(results)} failed); the first failed with: {first[-1][:300]}"
    client = MlflowClient(settings.tracking_uri)
    fail_run(client, parent_run(client, experiment_id, settings.experiment)[0], message)
    raise StudyFailed(message, resumable=False)
