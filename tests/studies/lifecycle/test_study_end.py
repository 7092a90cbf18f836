"""How a study ends other than by its summary, with the real Ray Tune, Optuna and MLflow: SIGTERM as Ctrl-C,
a second study of the same name refused while one runs, the storage path lost mid-study, and a study
without a trial that succeeded. None leaves an MLflow run RUNNING or FINISHED."""
import os
import shlex
import signal
import subprocess
import time

import pytest

from studies.search import main
from tests.fixtures.studies import RAY_ENV, run_study, study_command, trial_runs, wait_for_epochs

pytestmark = pytest.mark.slow  # each test runs a study


def _start(data_path, dirs: dict, err_path, *extra: str) -> subprocess.Popen:
    with err_path.open("w") as err:
        return subprocess.Popen(study_command(data_path, dirs, "--num-samples", "1", *extra), stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, **RAY_ENV})


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def test_sigterm_is_ctrl_c_and_a_running_study_holds_its_name(demo_data_path, study_dirs, tmp_path, capsys,
                                                               monkeypatch):
    """While a study runs, another of its name is refused in one line naming it, whether it shares its
    --storage-path or only its MLflow store. SIGTERM then ends it as Ctrl-C does: exit 143, its runs
    KILLED, and the command that continues it."""
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)  # main() sets it
    driver = _start(demo_data_path, study_dirs, tmp_path / "err", "--max-epochs", "20")
    try:
        wait_for_epochs(driver, study_dirs, lambda epochs: any(n >= 1 for n in epochs.values()))
        for storage in (study_dirs["storage"], tmp_path / "other-ray"):
            argv = study_command(demo_data_path, {**study_dirs, "storage": storage}, "--num-samples", "1")[3:]
            assert main(argv) == 2
            [line] = _error_lines(capsys.readouterr().err)  # after MLflow's INFO lines, if this made the store
            assert line.startswith("error: a study named t is running (pid ") and f"pid {driver.pid} on " in line, line
            assert "--experiment NEW_NAME" in line, line
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=120) == 143
    finally:
        driver.kill()
        driver.wait()
    err = (tmp_path / "err").read_text()
    assert "Traceback" not in err and "SIGABRT" not in err, err[-3000:]
    advice = [line for line in err.splitlines() if "--resume" in line]
    assert len(advice) == 1 and advice[0].startswith("study interrupted (SIGTERM); continue it with: "), err[-3000:]
    assert "--resume" in shlex.split(advice[0].split(": ", 1)[1])
    _, runs, parents = trial_runs(study_dirs["tracking_uri"])
    assert [(r.info.status, r.data.tags.get("interrupted")) for r in [*runs, *parents]] == [("KILLED", "true")] * 2


def test_a_storage_path_lost_mid_study_is_one_line(demo_data_path, study_dirs, tmp_path):
    driver = _start(demo_data_path, study_dirs, tmp_path / "err", "--max-epochs", "8")
    try:
        deadline = time.time() + 120
        while not list(study_dirs["storage"].glob("t/*/checkpoint_*")) and time.time() < deadline:
            time.sleep(0.5)
        study_dirs["storage"].rename(tmp_path / "moved-away")  # gone at once: Ray may write into it meanwhile
        assert driver.wait(timeout=180) == 1
    finally:
        driver.kill()
        driver.wait()
    err = (tmp_path / "err").read_text()
    lines = _error_lines(err)
    assert len(lines) == 1 and f"--storage-path {study_dirs['storage']} lost the study's folder" in lines[0], err[-3000:]
    _, runs, parents = trial_runs(study_dirs["tracking_uri"])
    statuses = [r.info.status for r in [*runs, *parents]]
    assert "RUNNING" not in statuses and "FINISHED" not in statuses, statuses


def test_a_study_without_a_successful_trial_fails(demo_data_path, study_dirs):
    """lr 1e20: the loss becomes NaN in the first epoch of every trial."""
    proc = run_study(demo_data_path, study_dirs, "--num-samples", "1", "--max-epochs", "1", "--lr", "1e20",
                     returncode=1)
    lines = _error_lines(proc.stderr)
    assert lines == [lines[-1]] and lines[0].startswith("error: no trial of the study succeeded (all 1 failed); the "
                                                        "first failed with: "), proc.stderr[-3000:]
    assert "the training loss became nan" in lines[0]
    # the console still shows Ray's report of the failed trial, by its name, and the table of error files
    assert "Trial task failed for trial trial 0" in proc.stderr and "Number of errored trials: 1" in proc.stdout
    _, runs, parents = trial_runs(study_dirs["tracking_uri"])
    assert [r.info.status for r in [*runs, *parents]] == ["FAILED", "FAILED"]
