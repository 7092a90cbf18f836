"""ASHA's rungs survive a study's interruption: a scheduler restored as Tuner.restore restores it (unpickled as
it was when the study began) makes the decisions the uninterrupted one makes."""
import pickle
from pathlib import Path

import pytest
import ray
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from studies.trials.resumable_asha import RUNGS_FILE, ResumableASHA

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _trial(storage_path, trial_id: str) -> Trial:
    storage = StorageContext(storage_path=str(storage_path), experiment_dir_name="study", trial_dir_name=trial_id)
    return Trial("train_ensemble", trial_id=trial_id, storage=storage, stub=True)


def _decide(scheduler, trials: dict, trial_id: str, epoch: int, recall: float) -> str:
    if trial_id not in trials:
        trials[trial_id] = _trial(scheduler.storage_path, trial_id)
        scheduler.on_trial_add(None, trials[trial_id])
    return scheduler.on_trial_result(None, trials[trial_id], {"epoch": epoch, "recall": recall})


def _scheduler(storage_path) -> ResumableASHA:
    scheduler = ResumableASHA(time_attr="epoch", metric="recall", mode="max", max_t=4, grace_period=1,
                              reduction_factor=3)
    scheduler.storage_path = storage_path  # the test's own attribute: where its trials live
    return scheduler


def test_a_restored_scheduler_decides_as_the_uninterrupted_one(tmp_path):
    began = pickle.dumps(_scheduler(tmp_path))  # what Tune's tuner.pkl holds: the scheduler before any result
    uninterrupted, trials = pickle.loads(began), {}
    before_interrupt = [("a", 1, 0.5), ("b", 1, 0.9), ("d", 1, 0.1)]
    assert [_decide(uninterrupted, trials, *result) for result in before_interrupt] == [CONTINUE, CONTINUE, STOP]
    assert (tmp_path / "study" / RUNGS_FILE).is_file()

    restored, restored_trials = pickle.loads(began), {}
    for trial_id in ("a", "b", "d"):  # Tune adds the restored trials again
        restored_trials[trial_id] = _trial(tmp_path, trial_id)
        restored.on_trial_add(None, restored_trials[trial_id])
    after = [("c", 1, 0.6),  # below the cutoff of a's and b's epoch 1: stopped, also after the restore
             ("d", 1, 0.1),  # d's checkpoint predates its stop: re-run, it is stopped again
             ("b", 3, 0.95), ("a", 3, 0.2)]  # the epoch-3 rung: b continues, a is stopped
    expected = [_decide(uninterrupted, trials, *result) for result in after if result[0] != "d"]
    decided = [_decide(restored, restored_trials, *result) for result in after]
    assert decided == [expected[0], STOP, *expected[1:]] == [STOP, STOP, CONTINUE, STOP]


def test_a_new_study_starts_with_empty_rungs(tmp_path):
    """A scheduler whose experiment folder has no rungs file (a new study) stops nothing on its first results."""
    scheduler, trials = _scheduler(tmp_path), {}
    assert [_decide(scheduler, trials, *result) for result in [("a", 1, 0.9), ("b", 1, 0.95)]] == [CONTINUE, CONTINUE]


@pytest.mark.slow  # Ray's staging folder is in its session
def test_ray_does_not_copy_the_rungs_back_over_themselves(tmp_path):
    """On restore Ray downloads the experiment folder's .json and .pkl files into its staging folder and later
    uploads that folder back, file by file: a rungs file among them would be overwritten by its stale copy (and
    read empty while copied: seen as a JSONDecodeError on --resume). Ray must leave it out."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="study")
    (tmp_path / "study").mkdir(exist_ok=True)
    (tmp_path / "study" / RUNGS_FILE).write_text('{"rungs": [], "stopped": {}}')
    (tmp_path / "study" / "experiment_state-x.json").write_text("{}")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        _ExperimentCheckpointManager(storage=storage, checkpoint_period=1).sync_down_experiment_state()
        staged = {p.name for p in Path(storage.experiment_driver_staging_path).iterdir()}
    finally:
        ray.shutdown()
    assert "experiment_state-x.json" in staged and RUNGS_FILE not in staged
