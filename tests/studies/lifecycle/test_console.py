"""The study's console: Ray Tune's own table reporter and trial names, on Ray's real Trial objects (no cluster)."""
import time
from types import SimpleNamespace

from ray.tune.experiment import Trial
from ray.tune.utils import log

from studies.lifecycle.console import StudyReporter, parameter_columns, trial_dirname, trial_name
from studies.trials.trainable import CONFIRM


def _trial(trial_id: str, tag: str, config: dict, status: str = Trial.TERMINATED, result: dict | None = None) -> Trial:
    storage = SimpleNamespace(experiment_driver_staging_path="/x", trial_driver_staging_path="/x/t")  # Ray's: a running Ray
    trial = Trial("train_ensemble", trial_id=trial_id, config=config, experiment_tag=tag, stub=True, storage=storage,
                  trial_name_creator=trial_name, trial_dirname_creator=trial_dirname)
    trial.set_status(status)
    if result is not None:
        trial.update_last_result({**result, "config": config})
    return trial


def test_trials_are_named_by_their_number_from_0_and_confirmation_runs_by_what_they_repeat():
    # Tune's search generator tags the trials it creates 1_..., 2_..., in order; the names count from 0
    assert str(_trial("914676e2", "4_ensemble_size=8,lr=0.0010", {"lr": 1e-3})) == "trial 3"
    assert str(_trial("914676e2", "1_lr=0.0010", {"lr": 1e-3})) == "trial 0"
    confirm = _trial("a7535_00004", "4_confirm=...", {CONFIRM: {"config": "trial 4", "repeat": 1, "values": {}}})
    assert str(confirm) == "confirm: trial 4, repeat 1"
    # the folder: the name and Ray's id, no spaces or punctuation
    assert trial_dirname(_trial("914676e2", "4_lr=0.001", {})) == "trial_3_914676e2"
    assert trial_dirname(confirm) == "confirm_trial_4_repeat_1_a7535_00004"


def test_the_table_shows_searched_values_and_the_selected_epoch_best_first(capsys, monkeypatch):
    """Trial 0's last epoch (0.744) is below its selected epoch (0.761, epoch 2), which beats trial 1's
    0.75: the best trial so far is trial 0, by its selected epoch, and it comes first."""
    monkeypatch.setattr(log, "verbosity", log.Verbosity.V1_EXPERIMENT)  # as the study's RunConfig(verbose=1) sets it
    reporter = StudyReporter(parameter_columns(["ensemble_size", "lr"]))
    reporter.setup(start_time=time.time(), metric="val_recall_at_1", mode="max")
    trials = [
        _trial("aaa", "1_x", {"ensemble_size": 8, "lr": 1e-3, "seed": 7},
               result={"epoch": 3, "val_recall_at_1": 0.744, "test_recall_at_1": 0.5, "best_epoch": 2,
                       "best_val_recall_at_1": 0.761, "loss": 1.0}),
        _trial("bbb", "2_x", {"ensemble_size": 4, "lr": 2e-3, "seed": 8},
               result={"epoch": 3, "val_recall_at_1": 0.75, "test_recall_at_1": 0.6, "best_epoch": 3,
                       "best_val_recall_at_1": 0.75, "loss": 1.0}),
        _trial("ccc", "3_x", {"ensemble_size": 2, "lr": 3e-3, "seed": 9}, status=Trial.PENDING),
    ]
    reporter.report(trials, False)
    out = capsys.readouterr().out
    assert "Best trial so far: trial 0, best_val_recall_at_1=0.7610 at epoch 2 (ensemble_size=8, lr=0.001)" in out
    assert "Current best trial" not in out and "aaa" not in out  # not Ray's line, which names the trial by its id
    header = next(line for line in out.splitlines() if "Trial name" in line)
    columns = [c.strip() for c in header.strip("|+ ").split("|")]
    assert columns == ["Trial name", "status", "loc", "ensemble_size", "lr", "epoch", "val_recall_at_1",
                       "test_recall_at_1", "best_val_recall_at_1"], header  # no seed, loss or Ray's counters
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| trial ")]
    assert rows == ["trial 2", "trial 0", "trial 1"]  # pending first (Ray's order of states), then the best first

    reporter.report(trials, True)  # the end: counts and the best trial; the study's summary lists the trials
    out = capsys.readouterr().out
    assert "Best trial so far: trial 0" in out and "Trial name" not in out


def test_a_confirmation_run_shows_the_values_it_repeats(capsys):
    reporter = StudyReporter(parameter_columns(["lr"], confirm=True))
    reporter.setup(start_time=time.time(), metric="val_recall_at_1", mode="max")
    config = {CONFIRM: {"config": "trial 4", "repeat": 0, "values": {"lr": 0.002}}, "seed": 0}
    trial = _trial("a_00000", "0_x", config, result={"epoch": 1, "val_recall_at_1": 0.5, "best_epoch": 1,
                                                      "best_val_recall_at_1": 0.5})
    reporter.report([trial], False)
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "confirm: trial 4, repeat 0" in line)
    assert "0.002" in row
    assert "Best trial so far: confirm: trial 4, repeat 0, best_val_recall_at_1=0.5000 at epoch 1 (lr=0.002)" in text
