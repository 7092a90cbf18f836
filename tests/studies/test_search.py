"""Smoke studies with the real Ray Tune, Optuna and MLflow."""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import optuna
import pandas as pd
import pytest
from PIL import Image

import antimetric
from studies.design.settings import SETTINGS_FILE
from studies.lifecycle.state_files import KEPT_FOLDER
from studies.search import main
from studies.trials.trainable import SCRATCH
from tests.fixtures.studies import (
    RAY_ENV,
    check_parent_run,
    check_trial_runs,
    check_trial_weights,
    metric_steps,
    run_study_in_process,
    stop_study_when,
    study_command,
    trial_runs,
)


@pytest.mark.slow
def test_smoke_study_records_every_trial(demo_data_path, smoke_study, capsys, monkeypatch):
    """The session's smoke study (conftest.smoke_study: a researcher's own space and fixed training options)."""
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)  # main() below sets it
    study_dirs, proc = smoke_study.dirs, smoke_study.proc
    assert "best config:" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert f"optuna.load_study(study_name='t', storage='sqlite:///{study_dirs['storage'].parent}/optuna.db')" in proc.stdout
    client, runs, summary = trial_runs(study_dirs["tracking_uri"])
    assert len(runs) == 3 and len({r.data.tags["trial_id"] for r in runs}) == 3
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["dataset"] == "demo"
        assert run.data.params["image_size"] == "32" and run.data.params["backbone"] == "tiny"
        assert run.data.params["val_fraction"] == "0.3" and run.data.params["with_fc"] == "True"
        # what ran, not "auto"
        assert run.data.params["device"] in ("cpu", "cuda") and run.data.params["implementation"] == "batched"
        assert run.data.params["num_workers"] == "0"
        assert run.data.params["ensemble_size"] in ("3", "4") and run.data.params["share_type"] == "layer1"
        steps = metric_steps(client, run)
        assert steps == list(range(1, len(steps) + 1)) and steps
        for key in ("test_recall_at_1", "test_map_at_r", "loss", "branch_accuracy", "images_per_s", "epoch_seconds"):
            assert key in run.data.metrics, key
        history = client.get_metric_history(run.info.run_id, "val_recall_at_1")  # the best epoch's weights
        best_value = max(m.value for m in history)
        assert antimetric.load(run.info.run_id, tracking_uri=study_dirs["tracking_uri"]).epoch == \
            min(m.step for m in history if m.value == best_value)
    check_trial_weights(client, runs, study_dirs["storage"])
    check_trial_runs(client, runs, summary, ["ensemble_size", "meta_class_size", "lr"])  # summary: the parent run
    check_parent_run(client, summary[0], runs, ["ensemble_size", "meta_class_size", "lr"])
    assert summary[0].data.params["image_size"] == "32" and summary[0].data.params["num_samples"] == "3"
    files = {a.path for a in client.list_artifacts(summary[0].info.run_id)}
    assert {"trials.csv", "best_config.json", "optimization_history.png", "intermediate_values.png"} <= files

    # storage holds no temporary file, no core run folder and no checkpoint (checked above)
    storage = study_dirs["storage"]
    assert not list(storage.rglob("*.tmp")) and not list(storage.rglob("last.pt"))
    for session in smoke_study.ray_sessions:  # Ray's local copies and trials' folders are gone
        assert not (session / "artifacts").exists(), list((session / "artifacts").rglob("*"))[:10]
        assert not (session / SCRATCH).exists(), list((session / SCRATCH).rglob("*"))[:10]

    # --resume refuses an option the study keeps, with its old and new values, before Ray starts
    assert (storage / "t" / SETTINGS_FILE).is_file()
    argv = study_command(demo_data_path, study_dirs)[3:]
    capsys.readouterr()
    assert main([*argv, "--resume", "--max-epochs", "5"]) == 2
    assert capsys.readouterr().err == ("error: --resume: --max-epochs was 2 for this study, not 5; drop it or start "
                                       "a new --experiment\n")
    assert main(["car", *argv[1:], "--resume"]) == 2
    assert "this study is of dataset demo, not car" in capsys.readouterr().err

    # Tune's last state save kept whole (studies/lifecycle/state_files.py); a driver killed while Ray copied its
    # search state leaves it cut short: without that copy, --resume refuses
    searcher_state = max((storage / "t").glob("searcher-state-*.pkl"))
    (kept,) = (storage / "t" / KEPT_FOLDER).iterdir()
    assert (kept / searcher_state.name).read_bytes() == searcher_state.read_bytes()
    searcher_state.write_bytes(searcher_state.read_bytes()[:100])
    shutil.rmtree(kept)
    proc = run_study_in_process(demo_data_path, study_dirs, "--resume", returncode=2)
    assert f"{searcher_state} was cut short" in proc.stderr and "no whole copy" in proc.stderr, proc.stderr[-2000:]

    # every trial in the Optuna study beside the MLflow store; parallel coordinate and slice from every trial
    # (a PRUNED one by its best epoch), importances only from 5 trials on (studies/conclusions/plots.py)
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{storage.parent / 'optuna.db'}").trials
    assert len(trials) == 3 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert {"parallel_coordinate.png", "slice.png", "slice.html"} <= files and "param_importances.png" not in files


@pytest.mark.slow
def test_the_console_is_short_and_names_the_best_trial_by_its_selected_epoch(smoke_study):
    """Ray's own table reporter (studies/lifecycle/console.py), without the boxes Ray's newer output prints as every trial
    starts and ends, and without the libraries' chatter."""
    out = smoke_study.proc.stdout + smoke_study.proc.stderr
    assert len(out.splitlines()) <= 60, out
    for noise in ("started with configuration", "╭", "A new study created in memory", "Downloading artifacts",
                  "tensorboard", "Result logdir", "Wrote the latest version", "Current best trial"):
        assert noise not in out, (noise, out)
    client, runs, _ = trial_runs(smoke_study.dirs["tracking_uri"])
    best = [line for line in out.splitlines() if line.startswith("Best trial so far: trial ")][-1]
    number = best.removeprefix("Best trial so far: trial ").split(",")[0]
    run = next(r for r in runs if r.data.tags["trial_number"] == number)
    metrics = run.data.metrics
    assert metrics["best_val_recall_at_1"] == max(r.data.metrics["best_val_recall_at_1"] for r in runs)
    assert f"best_val_recall_at_1={metrics['best_val_recall_at_1']:.4f} at epoch {metrics['best_epoch']:.0f} (" in best


@pytest.mark.slow
def test_one_name_per_trial_in_trials_csv_mlflow_optuna_ray_and_the_grid(smoke_study):
    """"trial N" (from 0, in the order Ray created the trials) in trials.csv's first column, MLflow's run names,
    Ray's trial folders, the Optuna record's numbers and the title of each trial's retrieval grid."""
    client, runs, parents = trial_runs(smoke_study.dirs["tracking_uri"])
    with tempfile.TemporaryDirectory() as folder:
        table = pd.read_csv(client.download_artifacts(parents[0].info.run_id, "trials.csv", folder))
    assert list(table.columns[:2]) == ["trial", "mlflow_run_id"] and "trial_id" not in table
    storage = smoke_study.dirs["storage"]
    optuna_numbers = {t.user_attrs["ray_trial_id"]: t.number for t in optuna.load_study(
        study_name="t", storage=f"sqlite:///{storage.parent / 'optuna.db'}").trials}
    assert sorted(table["trial"]) == [f"trial {n}" for n in range(len(runs))]
    assert set(optuna_numbers.values()) == set(range(len(runs)))
    assert all(f"trial {optuna_numbers[row.ray_trial_id]}" == row.trial for row in table.itertuples())
    for row in table.itertuples():
        run = client.get_run(row.mlflow_run_id)
        assert run.info.run_name.startswith(f"{row.trial}: ") and run.data.tags["trial_id"] == row.ray_trial_id
        assert row.trial_dir == run.data.tags["trial_dir"] and row.trial_dir.startswith(row.trial.replace(" ", "_") + "_")
        assert (storage / "t" / row.trial_dir).is_dir()  # Ray's folder, named by Ray's name of the trial
        with tempfile.TemporaryDirectory() as folder:
            grid = Image.open(client.download_artifacts(row.mlflow_run_id, "retrievals.png", folder))
            assert grid.text["Title"].startswith(f"{row.trial} · epoch {run.data.metrics['best_epoch']:.0f} · test Recall@1 ")


def _resume_and_interrupt(data_path, dirs: dict, args: tuple[str, ...], tmp_path, restored: str = "") -> list[str]:
    """--resume, then Ctrl-C (SIGINT) once a trial went on: exit 130, no summary, the trials' runs KILLED
    (not FINISHED), and one line with the command that continues the study, which is returned. `restored`: the
    state file --resume says it put back from its whole copy."""
    client, runs, _ = trial_runs(dirs["tracking_uri"])
    before = {r.data.tags["trial_id"]: len(metric_steps(client, r)) for r in runs}
    stderr_path = tmp_path / "interrupted.err"
    stop_study_when(data_path, dirs, (*args, "--resume"),
                    lambda epochs: any(n > before.get(t, 0) for t, n in epochs.items()), signal.SIGINT, stderr_path)
    err = stderr_path.read_text()
    if restored:
        notes = [line for line in err.splitlines() if "cut short when the study's driver was killed; their whole" in line]
        assert len(notes) == 1 and restored in notes[0], err
    client, runs, summary = trial_runs(dirs["tracking_uri"])  # summary: the parent run, KILLED without one
    assert [(p.info.status, p.data.tags.get("interrupted")) for p in summary] == [("KILLED", "true")], err[-3000:]
    assert "trials.csv" not in {a.path for a in client.list_artifacts(summary[0].info.run_id)}
    statuses = [r.info.status for r in runs]
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses
    assert all(r.data.tags["interrupted"] == "true" for r in runs if r.info.status == "KILLED")
    advice = [line for line in err.splitlines() if "--resume" in line or "Tuner.restore" in line]
    assert len(advice) == 1 and advice[0].startswith("study interrupted; continue it with: python -m studies.search"), err
    return shlex.split(advice[0].split(": ", 1)[1])


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(demo_data_path, study_dirs, tmp_path):
    """SIGKILL the driver mid-study; --resume keeps finished trials, continues the running ones
    from their checkpoints, and leaves exactly one finished MLflow run per trial. The resumed study is
    interrupted with Ctrl-C once and continued with the command it printed."""
    args = ("--max-epochs", "12", "--num-samples", "3")
    dirs = study_dirs
    stop_study_when(demo_data_path, dirs, args, lambda epochs: any(n >= 3 for n in epochs.values()), signal.SIGKILL)
    client, before, parent = trial_runs(dirs["tracking_uri"])
    running = {r.data.tags["trial_id"]: len(metric_steps(client, r)) for r in before if r.info.status == "RUNNING"}
    assert any(epochs >= 3 for epochs in running.values())
    # as a kill during Ray's copy of its state leaves it (or left it): cut short, its whole copy kept
    state = max((dirs["storage"] / "t").glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[:50])

    command = _resume_and_interrupt(demo_data_path, dirs, args, tmp_path, restored=state.name)
    resumed = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=240,
                             env={**os.environ, **RAY_ENV})  # its options come from the study's settings file
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, runs, summary = trial_runs(dirs["tracking_uri"])
    assert [p.info.run_id for p in summary] == [p.info.run_id for p in parent]  # the same one parent run
    assert summary[0].info.status == "FINISHED"
    assert "trials.csv" in {a.path for a in client.list_artifacts(summary[0].info.run_id)}
    check_trial_runs(client, runs, summary, [])  # best_* still the selected epoch's, across the resumes
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert len(by_trial) == len(runs)  # one run per trial
    assert {r.data.tags["trial_id"] for r in before} <= set(by_trial)
    statuses = {trial_id: run.info.status for trial_id, run in by_trial.items()}
    assert sum(s == "FINISHED" for s in statuses.values()) >= 3 and "RUNNING" not in statuses.values(), (
        f"{statuses}; the resumed study printed:\n{resumed.stdout[-5000:]}\n{resumed.stderr[-3000:]}")
    for trial_id, epochs in running.items():
        if epochs >= 3 and by_trial[trial_id].info.status == "FINISHED":
            # it went on from a checkpoint, not from epoch 1
            assert int(by_trial[trial_id].data.tags["resumed_at_epoch"]) > 1
    for run in runs:
        steps = metric_steps(client, run)
        assert steps == list(range(1, len(steps) + 1)), steps  # no epoch logged twice
    check_trial_weights(client, runs, dirs["storage"])  # logged once each, across the kill and the resumes
    assert str(client.get_model_version_by_alias("t-ensemble", "best").version) == "1"


def test_resume_without_a_study_is_a_clear_error(demo_data_path, study_dirs):
    proc = run_study_in_process(demo_data_path, study_dirs, "--resume", returncode=2)
    assert proc.stderr.startswith("error: --resume: no study to resume") and len(proc.stderr.splitlines()) == 1
