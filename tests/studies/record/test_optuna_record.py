"""The Optuna record of a study: every trial, in the order it started, in a persisted storage."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from ray.tune import Result

from studies.design.settings import StudySettings
from studies.design.spaces import distributions
from studies.record.optuna_live import (
    NOT_RESUMED,
    end_trial,
    finish_study,
    open_record,
    report_epoch,
    start_trial,
    trial_ids,
)
from studies.record.optuna_record import TrialRecord, load_command, optuna_storage_uri, trial_records, write_study

SPACE = {"ensemble_size": {"type": "choice", "values": [3, 4]},
         "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
DISTRIBUTIONS = distributions(SPACE, n_classes=100, fixed={})


def _records() -> list[TrialRecord]:
    """Listed neither by start nor by value: by start they are b (pruned), a, d (the best), c (failed), e."""
    return [
        TrialRecord("a", TrialState.COMPLETE, 1000.0, {1: 0.2, 2: 0.5, 3: 0.4}, {"ensemble_size": 3, "lr": 2e-3},
                    ended=1030.0),
        TrialRecord("c", TrialState.FAIL, 1100.0, {}, {"ensemble_size": 4, "lr": 9e-3}, error="ValueError: bad lr"),
        TrialRecord("d", TrialState.COMPLETE, 1050.0, {1: 0.6, 2: 0.9, 3: 0.8}, {"ensemble_size": 4, "lr": 3e-3},
                    ended=1090.0),
        TrialRecord("b", TrialState.PRUNED, 900.0, {1: 0.1}, {"ensemble_size": 3, "lr": 1e-3}, ended=905.0),
        TrialRecord("e", TrialState.COMPLETE, 1200.0, {1: 0.3, 2: 0.35, 3: 0.3}, {"ensemble_size": 3, "lr": 5e-3},
                    ended=1250.0),
    ]


def _storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_every_trial_is_recorded_in_start_order_and_persisted(tmp_path):
    write_study(_records(), _storage(tmp_path), "s", DISTRIBUTIONS)
    trials = optuna.load_study(study_name="s", storage=_storage(tmp_path)).trials
    assert [t.user_attrs["ray_trial_id"] for t in trials] == ["b", "a", "d", "c", "e"]  # best-first: d a e ...
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.datetime_start for t in trials] == [datetime.fromtimestamp(s) for s in (900, 1000, 1050, 1100, 1200)]
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.FAIL, TrialState.COMPLETE]
    assert [t.value for t in trials] == [None, 0.5, 0.9, None, 0.35]  # a COMPLETE one's best epoch
    assert trials[0].intermediate_values == {1: 0.1} and trials[2].intermediate_values == {1: 0.6, 2: 0.9, 3: 0.8}
    assert [t.user_attrs["epochs"] for t in trials] == [1, 3, 3, 0, 3]
    assert trials[3].user_attrs["error"] == "ValueError: bad lr" and "error" not in trials[1].user_attrs
    assert trials[2].params == {"ensemble_size": 4, "lr": 3e-3} and trials[2].distributions == DISTRIBUTIONS
    assert trials[2].datetime_complete == datetime.fromtimestamp(1090)


def test_a_second_write_replaces_the_study(tmp_path):
    """A resumed study writes its summary again: the record holds each trial once."""
    storage = _storage(tmp_path)
    write_study(_records(), storage, "s", DISTRIBUTIONS)
    write_study(_records(), storage, "other", DISTRIBUTIONS)
    later = TrialRecord("f", TrialState.COMPLETE, 1300.0, {1: 0.7, 2: 0.7, 3: 0.75}, {"ensemble_size": 4, "lr": 4e-3})
    write_study([*_records(), later], storage, "s", DISTRIBUTIONS)
    assert sorted(optuna.get_all_study_names(storage)) == ["other", "s"]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.user_attrs["ray_trial_id"] for t in trials] == ["b", "a", "d", "c", "e", "f"]
    assert len(optuna.load_study(study_name="other", storage=storage).trials) == 5


def test_a_complete_trial_without_a_finite_objective_is_a_failure(tmp_path):
    record = TrialRecord("n", TrialState.COMPLETE, 1.0, {1: float("nan")}, {"ensemble_size": 3, "lr": 2e-3})
    study = write_study([record], _storage(tmp_path), "s", DISTRIBUTIONS)
    assert study.trials[0].state == TrialState.FAIL and "no finite" in study.trials[0].user_attrs["error"]


def _settings(tracking_uri: str, storage_path: Path) -> StudySettings:
    return StudySettings(name="demo", data_path=Path("/data"), num_samples=3, max_epochs=2, max_concurrent=1,
                         cpus_per_trial=1, gpus_per_trial=0, address=None, tracking_uri=tracking_uri,
                         experiment="t", storage_path=storage_path, resume=False, seed=0, fixed={}, space=SPACE)


def test_the_storage_is_beside_the_mlflow_store(tmp_path):
    local = _settings(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", tmp_path / "ray")
    assert optuna_storage_uri(local) == f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    server = _settings("http://127.0.0.1:5000", tmp_path / "ray")
    assert optuna_storage_uri(server) == f"sqlite:///{tmp_path / 'ray' / 't' / 'optuna.db'}"


def _result(folder: Path, trial_id: str, rows: list[dict], metrics: dict | None = None,
            error: Exception | None = None) -> Result:
    """A ray.tune Result as a ResultGrid holds it: the trial's reports, its last one as metrics."""
    folder.mkdir()
    frame = pd.DataFrame(rows) if rows else None
    last = {**rows[-1], "trial_id": trial_id, "config": CONFIG} if rows else {"trial_id": trial_id}
    return Result(metrics=metrics or last, checkpoint=None, error=error, path=str(folder), metrics_dataframe=frame)


CONFIG = {"ensemble_size": 4, "lr": 3e-3, "num_epochs": 3, "backbone": "tiny"}


def _reports(start: float, values: list[float], epochs: list[int] | None = None) -> list[dict]:
    """Ray's reports: a timestamp (whole seconds) and the time run so far, per epoch."""
    epochs = epochs or list(range(1, len(values) + 1))
    return [{"epoch": e, "val_recall_at_1": v, "timestamp": int(start + 10 * (i + 1)), "time_total_s": 10.0 * (i + 1)}
            for i, (e, v) in enumerate(zip(epochs, values))]


def test_ray_results_become_records(tmp_path):
    """Start times from Ray's reports (the trial started its first report's time_total_s before it); a
    trial that never reported starts when its trainable did, or else just after the trial created before it."""
    never_reported = tmp_path / "never"
    results = [
        _result(tmp_path / "first", "t1", _reports(1000, [0.5, 0.6, 0.55])),
        # resumed from the checkpoint of epoch 2 after its epoch 3 was reported: the later report counts
        _result(tmp_path / "resumed", "t2", _reports(990, [0.2, 0.3, 0.4, 0.45], epochs=[1, 2, 3, 3])),
        _result(tmp_path / "pruned", "t3", _reports(1200, [0.1])),
        _result(never_reported, "t4", [], error=RuntimeError("Traceback (most recent call last):\nValueError: bad lr")),
        _result(tmp_path / "started", "t5", [], metrics={"trial_id": "t5", "timestamp": 1500, "config": CONFIG},
                error=RuntimeError("OOM")),
        # created after t5 and started in the same second: its whole-second timestamp puts it 0.6 s before
        _result(tmp_path / "same_second", "t6", [{**_reports(1500, [0.3])[0], "time_total_s": 10.6}]),
    ]
    (never_reported / "params.json").write_text(json.dumps({**CONFIG, "lr": 9e-3}))  # Ray writes it at the start
    records = trial_records(results, ["ensemble_size", "lr"])
    assert [(r.ray_trial_id, r.state, r.started) for r in records] == [
        ("t1", TrialState.COMPLETE, 1000.0), ("t2", TrialState.COMPLETE, 990.0), ("t3", TrialState.PRUNED, 1200.0),
        ("t4", TrialState.FAIL, 1200.0), ("t5", TrialState.FAIL, 1500.0), ("t6", TrialState.PRUNED, 1500.0)]
    assert records[1].objective == {1: 0.2, 2: 0.3, 3: 0.45} and records[1].ended == 1030.0
    assert records[0].params == {"ensemble_size": 4, "lr": 3e-3} and records[3].params == {"ensemble_size": 4, "lr": 9e-3}
    assert records[3].error == "ValueError: bad lr" and records[3].objective == {} and records[4].error == "OOM"

    study = write_study(records, _storage(tmp_path), "s", DISTRIBUTIONS)
    assert [t.user_attrs["ray_trial_id"] for t in study.trials] == ["t2", "t1", "t3", "t4", "t5", "t6"]
    assert [t.value for t in study.trials] == [0.45, 0.6, None, None, None, None]


@pytest.fixture(autouse=True)
def _no_open_figures():
    yield
    plt.close("all")


def _live(tmp_path: Path, record_id: str = "study-1"):
    """A record kept live: trials a, b, c started in that order, a and b with epochs reported."""
    storage = optuna.storages.get_storage(_storage(tmp_path))
    study_id = open_record(storage, "s", record_id)
    ids = {name: start_trial(storage, study_id, name, {"ensemble_size": 3, "lr": 2e-3}, DISTRIBUTIONS, f"run-{name}")
           for name in "abc"}
    for name, values in (("a", [0.2, 0.5]), ("b", [0.1, 0.3])):
        for epoch, value in enumerate(values, 1):
            report_epoch(storage, ids[name], epoch, value)
    return storage, study_id, ids


def test_a_live_trial_is_running_with_its_epochs_and_run_until_it_ends(tmp_path):
    storage, _, ids = _live(tmp_path)
    report_epoch(storage, ids["a"], 2, 0.45)  # epoch 2 again, from an older checkpoint: the later value
    trials = optuna.load_study(study_name="s", storage=_storage(tmp_path)).trials
    assert [(t.number, t.state, t.user_attrs["ray_trial_id"], t.user_attrs["mlflow_run_id"]) for t in trials] == [
        (0, TrialState.RUNNING, "a", "run-a"), (1, TrialState.RUNNING, "b", "run-b"), (2, TrialState.RUNNING, "c", "run-c")]
    assert trials[0].intermediate_values == {1: 0.2, 2: 0.45}
    assert trials[0].params == {"ensemble_size": 3, "lr": 2e-3}
    end_trial(storage, ids["a"], TrialRecord("a", TrialState.PRUNED, 0.0, {1: 0.2, 2: 0.45}))
    report_epoch(storage, ids["a"], 3, 0.9)  # a report after its end changes nothing
    end_trial(storage, ids["a"], TrialRecord("a", TrialState.COMPLETE, 0.0, {1: 0.2, 2: 0.45, 3: 0.9}))
    trial = optuna.load_study(study_name="s", storage=_storage(tmp_path)).trials[0]
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {1: 0.2, 2: 0.45}
    assert trial.user_attrs["epochs"] == 2


def test_a_resumed_study_goes_on_with_its_record_and_a_new_one_replaces_it(tmp_path):
    storage, study_id, ids = _live(tmp_path)
    assert open_record(storage, "s", "study-1") == study_id and trial_ids(storage, study_id) == ids
    open_record(storage, "s", "study-2")  # a new study of the same name (its Ray folder was removed)
    assert optuna.load_study(study_name="s", storage=_storage(tmp_path)).trials == []


def test_the_study_end_completes_the_live_record_in_place(tmp_path):
    """Numbers and study kept (the dashboard's page of it stays); a trial Ray no longer holds ends FAIL."""
    storage, study_id, ids = _live(tmp_path)
    end_trial(storage, ids["a"], TrialRecord("a", TrialState.COMPLETE, 0.0, {1: 0.2, 2: 0.5}))
    records = [TrialRecord("b", TrialState.COMPLETE, 5.0, {1: 0.1, 2: 0.3, 3: 0.35}),
               TrialRecord("a", TrialState.COMPLETE, 9.0, {1: 0.2, 2: 0.5})]  # Ray's start times need not agree
    study = finish_study(records, _storage(tmp_path), "s", DISTRIBUTIONS)
    assert optuna.storages.get_storage(_storage(tmp_path)).get_study_id_from_name("s") == study_id
    assert [(t.number, t.user_attrs["ray_trial_id"], t.state, t.value) for t in study.trials] == [
        (0, "a", TrialState.COMPLETE, 0.5), (1, "b", TrialState.COMPLETE, 0.35), (2, "c", TrialState.FAIL, None)]
    assert study.trials[1].intermediate_values == {1: 0.1, 2: 0.3, 3: 0.35} and study.trials[1].user_attrs["epochs"] == 3
    assert study.trials[2].user_attrs["error"] == NOT_RESUMED

    # a study whose trials are not all in the record (begun before it was kept live) is written anew
    later = TrialRecord("d", TrialState.COMPLETE, 1.0, {1: 0.7}, {"ensemble_size": 4, "lr": 4e-3})
    study = finish_study([*records, later], _storage(tmp_path), "s", DISTRIBUTIONS)
    assert [t.user_attrs["ray_trial_id"] for t in study.trials] == ["d", "b", "a"]


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
def test_the_printed_dashboard_command_shows_the_study(tmp_path):
    """`optuna-dashboard STORAGE` as the summary prints it, on a port of its own: it lists the study and its
    trials in the order they started."""
    settings = _settings(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray")
    write_study(_records(), optuna_storage_uri(settings), "t", DISTRIBUTIONS)
    command = shlex.split(load_command(settings).split("# or: ", 1)[1])
    assert command[0] == "optuna-dashboard"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with (tmp_path / "dashboard.log").open("w") as log:
        server = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                                  stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline and server.poll() is None:
            try:
                studies = _get(port, "/api/studies")["study_summaries"]
            except OSError:  # not listening yet
                time.sleep(0.5)
        assert studies is not None, (server.poll(), (tmp_path / "dashboard.log").read_text()[-2000:])
        assert [s["study_name"] for s in studies] == ["t"]
        trials = _get(port, f"/api/studies/{studies[0]['study_id']}")["trials"]
        assert [(t["number"], t["state"]) for t in trials] == [(0, "Pruned"), (1, "Complete"), (2, "Complete"),
                                                              (3, "Fail"), (4, "Complete")]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def test_the_record_numbers_trials_in_the_order_ray_made_them(tmp_path):
    """Trial 1 starting before trial 0 (made together, started in either order): trial 0 is recorded first,
    WAITING, so that Optuna's numbers are Ray's and MLflow's "trial N"; then RUNNING when it starts."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from studies.record.optuna_live import OptunaRecordCallback

    def made(trial_id: str) -> Trial:
        return Trial("train_ensemble", trial_id=trial_id, config={"ensemble_size": 3, "lr": 2e-3}, stub=True,
                     storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="s"))

    trials = [made("first"), made("second")]
    callback = OptunaRecordCallback(_storage(tmp_path), "s", DISTRIBUTIONS)
    callback.on_trial_start(0, trials, trials[1])
    recorded = optuna.load_study(study_name="s", storage=_storage(tmp_path)).trials
    assert [(t.number, t.user_attrs["ray_trial_id"], t.state) for t in recorded] == [
        (0, "first", TrialState.WAITING), (1, "second", TrialState.RUNNING)]
    callback.on_trial_start(0, trials, trials[0])
    assert optuna.load_study(study_name="s", storage=_storage(tmp_path)).trials[0].state == TrialState.RUNNING
