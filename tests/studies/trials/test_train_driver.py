"""Trials on several workers (--workers-per-trial N on CPUs; --gpus-per-trial N on GPUs): each trial a Ray Train
TorchTrainer of N workers, run by real Ray Tune, Optuna and MLflow."""
import os
import shlex
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

import antimetric
from antimetric.base.cpus import available_cpus
from antimetric.errors import ConfigError
from studies.design.settings import save_settings, saved_settings
from studies.search import parse_args
from tests.fixtures.studies import (
    RAY_ENV,
    check_trial_runs,
    check_trial_weights,
    metric_steps,
    poll_optuna_record,
    stop_study_when,
    study_command,
    trial_runs,
)

# Three trials one after another, 5 epochs at most; with seed 1 ASHA stops trial 1 at its first rung and trial 2 then
# starts on the CPUs trial 1 held (each trial's start, ~25 s of Ray Train actors on two cores, is most of the test).
WORKERS = ("--workers-per-trial", "2", "--backbone", "tiny", "--num-samples", "3", "--max-epochs", "5",
           "--cpus-per-trial", "2", "--max-concurrent", "1", "--seed", "1")


@pytest.mark.slow
def test_a_study_of_two_worker_trials_survives_a_kill_and_ctrl_c_and_records_each_trial_once(demo_data_path,
                                                                                              study_dirs, tmp_path):
    """The issue's test: every trial on two workers; ASHA stops one, and the next trial's workers start (before
    ReleaseTrainGroups the stopped trial's placement group held both CPUs of a 2-core machine: the next trial
    waited for ever). SIGKILL the study's process while a trial runs, --resume it, Ctrl-C once a trial went on,
    then the --resume command it printed: each interrupted trial continues from its Train run's checkpoint (as a
    one-device trial from Tune's); one MLflow run per trial, its weights logged, no checkpoint left in the
    study's storage."""
    if available_cpus() < 2:
        pytest.skip("two workers need two CPUs")
    dirs = study_dirs
    record = f"sqlite:///{dirs['storage'].parent / 'optuna.db'}"
    driver = subprocess.Popen(study_command(demo_data_path, dirs, *WORKERS), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, **RAY_ENV})
    try:  # optuna.load_study while the study runs sees its trials, numbered in start order, a running one with
        # its epochs and no value
        live = poll_optuna_record(driver, record, lambda trials: any(
            t.state == TrialState.RUNNING and len(t.intermediate_values) >= 2 for t in trials))
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    assert [t.number for t in live] == list(range(len(live)))
    assert all(t.value is None and t.datetime_complete is None for t in live if t.state == TrialState.RUNNING)
    client, before, _ = trial_runs(dirs["tracking_uri"])
    epochs_before = {r.data.tags["trial_id"]: len(metric_steps(client, r)) for r in before}
    running = {trial: epochs_before[trial] for trial in (r.data.tags["trial_id"] for r in before
                                                        if r.info.status == "RUNNING")}
    assert running, [r.info.status for r in before]

    err_path = tmp_path / "interrupted.err"
    stop_study_when(demo_data_path, dirs, (*WORKERS, "--resume"),
                    lambda epochs: any(n > epochs_before.get(t, 0) for t, n in epochs.items()), signal.SIGINT,
                    err_path)
    client, interrupted_runs, _ = trial_runs(dirs["tracking_uri"])
    interrupted = {r.data.tags["trial_id"]: len(metric_steps(client, r)) for r in interrupted_runs
                   if r.info.status == "KILLED"}
    assert interrupted, [r.info.status for r in interrupted_runs]
    advice = [line for line in err_path.read_text().splitlines() if "--resume" in line]
    assert len(advice) == 1, err_path.read_text()[-3000:]
    command = shlex.split(advice[0].split(": ", 1)[1])

    _resume_to_the_end(command, dirs, {**running, **interrupted},
                       numbers={t.user_attrs["ray_trial_id"]: t.number for t in live})


def _resume_to_the_end(command: list[str], dirs: dict, unfinished: dict[str, int], numbers: dict[str, int]) -> None:
    """Run the resume `command` to its end; then one finished MLflow run per trial, each of two workers, one stopped
    by ASHA before another trial started, the `unfinished` trials (id: epochs in MLflow before) gone on from a checkpoint, no epoch lost, the
    weights of the whole ensemble logged, the Optuna record's trials as the runs (none twice, the `numbers` they
    had before unchanged: trial id -> number), nothing left of the trials' checkpoints and Train runs."""
    resumed = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=600,
                             env={**os.environ, **RAY_ENV})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, runs, parents = trial_runs(dirs["tracking_uri"])
    check_trial_runs(client, runs, parents, [])
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert len(by_trial) == len(runs) == 3  # one run per trial, across the interruption
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert {r.data.params["world_size"] for r in runs} == {"2"}  # what each trial's workers reported
    stopped = [int(r.data.tags["trial_number"]) for r in runs if r.data.tags["stopped_early"] == "true"]
    assert stopped and min(stopped) < len(runs) - 1, stopped  # a trial ran after one ASHA stopped
    for trial_id, epochs in unfinished.items():
        if epochs >= 1:  # its workers went on from the Train run's checkpoint, not from epoch 1 (no tag: the
            # checkpoint was of its last epoch, which it reported again)
            assert by_trial[trial_id].data.tags.get("resumed_at_epoch") != "1"
    for run in runs:  # no epoch lost: the one of a checkpoint that Tune had not taken yet is reported again
        assert metric_steps(client, run) == list(range(1, len(metric_steps(client, run)) + 1))
        trained = antimetric.load(run.info.run_id, tracking_uri=dirs["tracking_uri"])  # gathered from both workers
        assert trained.meta_ids.shape[0] == int(run.data.params["ensemble_size"])
        assert trained.epoch == run.data.metrics["best_epoch"]
    check_trial_weights(client, runs, dirs["storage"])
    optuna_trials = optuna.load_study(study_name="t", storage=f"sqlite:///{dirs['storage'].parent / 'optuna.db'}").trials
    assert sorted(t.user_attrs["ray_trial_id"] for t in optuna_trials) == sorted(by_trial)  # the Optuna record
    assert {t.user_attrs["ray_trial_id"]: t.number for t in optuna_trials
            if t.user_attrs["ray_trial_id"] in numbers} == numbers
    for trial in optuna_trials:
        run = by_trial[trial.user_attrs["ray_trial_id"]]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_recall_at_1")}
        assert trial.intermediate_values == history, trial.number
        assert trial.state == (TrialState.PRUNED if run.data.tags["stopped_early"] == "true" else TrialState.COMPLETE)
        assert run.data.tags["trial_number"] == str(trial.number) and trial.user_attrs["epochs"] == max(history)
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        if trial.state == TrialState.COMPLETE:
            assert trial.value == max(history.values())
    assert not any((dirs["storage"] / "t" / "train_runs").iterdir())  # each ended trial's Train run deleted


def _settings(tmp_path, *args):
    return parse_args(["demo", "--data-path", str(tmp_path), "--storage-path", str(tmp_path / "ray"),
                       "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *args])


def test_the_workers_are_kept_with_the_study(tmp_path):
    settings = _settings(tmp_path, "--workers-per-trial", "2", "--ensemble-size", "4")
    assert (settings.workers_per_trial, settings.gpus_per_trial) == (2, 0)
    settings.experiment_path.mkdir(parents=True)
    save_settings(settings)
    assert saved_settings(settings.experiment_path)["workers_per_trial"] == 2
    assert _settings(tmp_path, "--resume").workers_per_trial == 2
    with pytest.raises(ConfigError, match="--workers-per-trial was 2 for this study, not 3"):
        _settings(tmp_path, "--resume", "--workers-per-trial", "3")
    with pytest.raises(ConfigError, match="this study's trials have 2 workers each, not 4"):
        _settings(tmp_path, "--resume", "--gpus-per-trial", "4")


@pytest.mark.parametrize("options, message", [
    (["--workers-per-trial", "3", "--ensemble-size", "2"],
     "--workers-per-trial 3: a trial's branches are split among its workers, and --ensemble-size gives ensembles of "
     "2 branches; pass at most 2 workers or larger ensembles"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5: above 1 it is the trial's workers, a GPU each; pass a whole "
                                  "number"),
    (["--gpus-per-trial", "2", "--workers-per-trial", "3"],
     "--workers-per-trial 3 with --gpus-per-trial 2: a trial's workers have a GPU each; pass one of the two"),
    (["--gpus-per-trial", "0.5", "--workers-per-trial", "2"],
     "--gpus-per-trial 0.5 with --workers-per-trial 2: each worker of a trial has a whole GPU; pass "
     "--gpus-per-trial 2, or 0 to train on CPUs"),
])
def test_workers_that_cannot_work_are_one_line(tmp_path, options, message):
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, *options)
    assert str(error.value) == message


def test_the_built_in_space_bounds_the_workers(tmp_path):
    with pytest.raises(ConfigError, match=r"the built-in demo space draws ensembles of \d+ branches"):
        _settings(tmp_path, "--workers-per-trial", "1000")
