import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    return client, [r for r in runs if "trial_id" in r.data.tags], [r for r in runs if "study_summary" in r.data.tags]
