"""A study through --address on a Ray head node of the test's own on 127.0.0.1, and that stopping that head
leaves any other Ray on the machine (a user's study) running."""
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.fixtures.ray_head import free_port, processes_naming, ray_command, ray_head, stop_head
from tests.fixtures.studies import RAY_ENV, run_study, trial_runs

pytestmark = pytest.mark.slow  # Ray head nodes and a study subprocess


def test_a_study_on_an_existing_cluster_and_stopping_its_head_leaves_another_ray_running(demo_data_path,
                                                                                         study_dirs):
    """A study through --address on the test's own head; a user's head, started as users do (`ray start --head`,
    daemonised) before it, outlives the tests' head."""
    users = tempfile.mkdtemp(prefix="ru", dir="/tmp")
    subprocess.run([ray_command(), "start", "--head", f"--port={free_port()}", "--num-cpus=1",
                    "--include-dashboard=false", f"--temp-dir={users}", "--disable-usage-stats"], check=True,
                   capture_output=True, env={**os.environ, **RAY_ENV}, timeout=120)
    try:
        running = processes_naming(users)
        assert running
        with ray_head() as address:
            proc = run_study(demo_data_path, study_dirs, "--address", address, "--num-samples", "2")
            assert "best config:" in proc.stdout
        assert processes_naming(users) == running
    finally:
        stop_head(None, users)
        shutil.rmtree(users, ignore_errors=True)
    _, runs, _ = trial_runs(study_dirs["tracking_uri"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
