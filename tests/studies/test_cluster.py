"""A study through --address on a Ray head node started with `ray start` on 127.0.0.1."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.studies import RAY_ENV, run_study, trial_runs

pytestmark = pytest.mark.slow  # a Ray head node and a study subprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_study_on_an_existing_cluster(demo_data_path, study_dirs):
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, **RAY_ENV}
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # unix socket paths must stay short
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"], check=True, capture_output=True, env=env,
                   timeout=120)
    try:
        proc = run_study(demo_data_path, study_dirs, "--address", f"127.0.0.1:{port}", "--num-samples", "2")
        assert "best config:" in proc.stdout
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    _, runs, _ = trial_runs(study_dirs["tracking_uri"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
