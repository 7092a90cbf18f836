import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

# Real Ray on loopback, no usage reports, no auth tokens.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
os.environ.update(RAY_ENV)


@pytest.fixture(scope="session", autouse=True)
def ray_temp_dir():
    """Ray's session folders (logs, sockets; ~60 MB per cluster) in one folder removed after the tests,
    not left in /tmp/ray. The path stays short: Ray's unix sockets live under it (107 bytes at most)."""
    folder = tempfile.mkdtemp(prefix="amr", dir="/tmp")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = folder  # read by in-process ray.init and by every study subprocess
    yield folder
    if previous is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = previous
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def study_dirs(tmp_path):
    """A private MLflow store and Ray storage folder for one study."""
    return {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage": tmp_path / "ray"}


@pytest.fixture(scope="session")
def smoke_study(demo_data_path, tmp_path_factory, ray_temp_dir) -> SimpleNamespace:
    """One finished smoke study per test session, for every test that reads one (its trials in MLflow, its
    registered model): 3 trials of 2 epochs, with a researcher's own space and fixed training options.
    dirs: its MLflow store and Ray storage; proc: the finished `studies.search` process; ray_sessions: the
    Ray session folders it made. Read it; test_search's smoke test cuts a Ray state file of it at its end."""
    folder = tmp_path_factory.mktemp("smoke-study")
    dirs = {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "storage": folder / "ray"}
    space = folder / "space.json"
    space.write_text(json.dumps({"ensemble_size": {"type": "choice", "values": [3, 4]},
                                 "meta_class_size": {"type": "int", "low": 3, "high": 6},
                                 "lr": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}}))
    sessions = Path(ray_temp_dir) / "ray"
    before = set(sessions.glob("session_2*"))
    proc = run_study(demo_data_path, dirs, "--backbone", "tiny", "--val-fraction", "0.3", "--with-fc",
                     "--space", str(space))
    return SimpleNamespace(dirs=dirs, proc=proc, ray_sessions=set(sessions.glob("session_2*")) - before)


def study_command(data_path: Path, dirs: dict, *extra: str) -> list[str]:
    return [sys.executable, "-m", "studies.search", "demo", "--smoke-test", "--data-path", str(data_path),
            "--tracking-uri", dirs["tracking_uri"], "--storage-path", str(dirs["storage"]), "--experiment", "t", *extra]


def run_study(data_path: Path, dirs: dict, *extra: str, timeout: int = 240,
              returncode: int = 0) -> subprocess.CompletedProcess:
    """Run `python -m studies.search` to its end and check its exit status."""
    try:
        proc = subprocess.run(study_command(data_path, dirs, *extra), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **RAY_ENV})
    except subprocess.TimeoutExpired as expired:  # show where the study was when it ran out of time
        output = "".join(_text(part) for part in (expired.stdout, expired.stderr))
        raise AssertionError(f"study did not finish in {timeout} s; its output ended:\n{output[-6000:]}") from None
    assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _text(part: str | bytes | None) -> str:
    if part is None:
        return ""
    return part.decode("utf-8", "replace") if isinstance(part, bytes) else part


def trial_runs(tracking_uri: str, experiment: str = "t"):
    """(client, the trials' runs, the study's parent runs) of an experiment."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    return client, [r for r in runs if "trial_id" in r.data.tags], [r for r in runs if "study_parent" in r.data.tags]


# What Ray adds to every result; none of it is a trial's metric in MLflow.
RAY_KEYS = {"pid", "hostname", "node_ip", "time_since_restore", "time_total_s", "iterations_since_restore",
            "training_iteration", "timestamp", "date", "done", "trial_id", "checkpoint_dir_name", "time_this_iter_s",
            "timesteps_total", "episodes_total", "timesteps_since_restore", "experiment_tag", "should_checkpoint"}


def check_trial_runs(client, runs, parents, searched: list[str]) -> None:
    """One parent run; each trial's run nested under it, named by its number (start order, from 0) and its
    searched values; its selected epoch's metrics again as best_*; no Ray bookkeeping among its metrics;
    `lr` a param, the epoch's learning rate the metric lr_epoch."""
    assert len(parents) == 1, [p.info.run_name for p in parents]
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == list(range(len(runs)))
    for run in runs:
        run_id, name, params, metrics = run.info.run_id, run.info.run_name, run.data.params, run.data.metrics
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert name.startswith(f"trial {run.data.tags['trial_number']}: "), name
        for key in searched:
            assert (f"{key}={params[key]}" if params[key].lstrip("-").isdigit() else f"{key}=") in name, (key, name)
        assert not RAY_KEYS & set(metrics), RAY_KEYS & set(metrics)
        assert "lr" in params and "lr" not in metrics
        history = client.get_metric_history(run_id, "val_recall_at_1")
        if not history:  # a trial that failed before its first epoch ended
            continue
        assert "lr_epoch" in metrics
        best = max(history, key=lambda m: (m.value, -m.step))  # the first epoch of the best objective
        assert metrics["best_epoch"] == best.step, (name, metrics["best_epoch"], best.step)
        for key in ("val_recall_at_1", "test_recall_at_1", "test_map_at_r"):
            at_best = [m.value for m in client.get_metric_history(run_id, key) if m.step == best.step]
            assert metrics[f"best_{key}"] == at_best[-1], key


def check_parent_run(client, parent, runs) -> None:
    """The study's parent run at its end: FINISHED, its search space, its trial counts, and the best
    trial's selected-epoch metrics, which are that trial's best_*."""
    assert parent.info.status == "FINISHED"
    assert "search_space.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    metrics, finished = parent.data.metrics, [r for r in runs if r.info.status == "FINISHED"]
    assert metrics["trials"] == len(runs) and metrics["trials_done"] == len(finished)
    assert metrics["trials_failed"] == len(runs) - len(finished)
    assert metrics["trials_stopped_early"] == sum(r.data.tags["stopped_early"] == "true" for r in finished)
    best = max(r.data.metrics["best_val_recall_at_1"] for r in finished)
    assert metrics["best_val_recall_at_1"] == best
    assert metrics["best_test_recall_at_1"] in {r.data.metrics["best_test_recall_at_1"] for r in finished
                                                if r.data.metrics["best_val_recall_at_1"] == best}  # ties: any
