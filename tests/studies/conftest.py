"""Fixtures of the studies' tests; the functions they share are in tests/fixtures/studies.py."""
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fixtures.mlflow_store import new_tracking_uri
from tests.fixtures.studies import RAY_ENV, run_study

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
    return {"tracking_uri": new_tracking_uri(tmp_path / "mlflow.db"), "storage": tmp_path / "ray"}


@pytest.fixture(scope="session")
def smoke_study(demo_data_path, tmp_path_factory, ray_temp_dir) -> SimpleNamespace:
    """One finished smoke study per test session, for every test that reads one (its trials in MLflow, its
    registered model): 3 trials of 2 epochs, with a researcher's own space and fixed training options.
    dirs: its MLflow store and Ray storage; proc: the finished `studies.search` process; ray_sessions: the
    Ray session folders it made. Read it; test_search's smoke test cuts a Ray state file of it at its end."""
    folder = tmp_path_factory.mktemp("smoke-study")
    dirs = {"tracking_uri": new_tracking_uri(folder / "mlflow.db"), "storage": folder / "ray"}
    space = folder / "space.json"
    space.write_text(json.dumps({"ensemble_size": {"type": "choice", "values": [3, 4]},
                                 "meta_class_size": {"type": "int", "low": 3, "high": 6},
                                 "lr": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}}))
    sessions = Path(ray_temp_dir) / "ray"
    before = set(sessions.glob("session_2*"))
    proc = run_study(demo_data_path, dirs, "--backbone", "tiny", "--val-fraction", "0.3", "--with-fc",
                     "--space", str(space))
    return SimpleNamespace(dirs=dirs, proc=proc, ray_sessions=set(sessions.glob("session_2*")) - before)
