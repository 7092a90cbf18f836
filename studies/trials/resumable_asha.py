"""ASHA whose rungs survive an interrupted study.

Tune saves the searcher's state with the experiment, but not the scheduler's: `Tuner.restore` unpickles the
scheduler as it was when the study began, with empty rungs. A resumed study's ASHA would then compare new
trials with fewer (or later) results than the uninterrupted study's did, and stop other trials; and a trial
that re-runs an epoch after the restore (its checkpoint was older than its last result) would be judged again.
This scheduler writes its rungs, and the trials it stopped, to `asha_rungs.state` (JSON) in the experiment's folder
after every change, and reads them back before the first decision of a resumed study: the same results get
the same decisions.
"""
from __future__ import annotations

import json
from pathlib import Path

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from antimetric.base.atomic import write_json
from studies.compat import asha_rungs

# Not *.json or *.pkl: on restore Ray downloads those files of the experiment folder into its staging folder and
# uploads them back later, file by file, which would put a stale copy over the rungs (read empty mid-copy).
RUNGS_FILE = "asha_rungs.state"


class ResumableASHA(ASHAScheduler):
    """ASHAScheduler with one bracket (its default) whose state lives in the experiment folder too."""

    def __init__(self, time_attr: str, **asha_options) -> None:
        super().__init__(time_attr=time_attr, **asha_options)
        self.time_attr = time_attr
        self._state_file: Path | None = None  # found from the first trial: the experiment may have moved
        self._stopped: dict[str, float] = {}  # trial id -> the epoch ASHA stopped it at

    def _find_state(self, trial: Trial) -> None:
        """Before the first decision: the experiment's folder (a trial's parent, known once it started)."""
        if self._state_file is None:
            self._state_file = Path(trial.path).parent / RUNGS_FILE
            self._load()

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._find_state(trial)
        stopped_at = self._stopped.get(trial.trial_id)
        if stopped_at is not None and result.get(self.time_attr, -1) >= stopped_at:
            return TrialScheduler.STOP  # stopped before the study was interrupted; its restore re-ran the epoch
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and self.time_attr in result:
            self._stopped[trial.trial_id] = result[self.time_attr]
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._find_state(trial)
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def _save(self) -> None:
        if self._state_file is None:
            return
        write_json(self._state_file, {"rungs": [[milestone, recorded] for milestone, recorded in asha_rungs(self)],
                                      "stopped": self._stopped})

    def _load(self) -> None:
        if not self._state_file.is_file():
            return  # a new study
        state = json.loads(self._state_file.read_text())
        saved = {float(milestone): recorded for milestone, recorded in state["rungs"]}
        for milestone, recorded in asha_rungs(self):
            recorded.clear()
            recorded.update(saved.get(float(milestone), {}))
        self._stopped = dict(state["stopped"])
