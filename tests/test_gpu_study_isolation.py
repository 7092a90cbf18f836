"""gpu_study measures each row of `levers` in a process of its own (benchmarks/study_rows.py): rows whose
global settings conflict each report the setting they ran with, and a row whose process dies is recorded
as that row's error while the next row runs. Real processes throughout; no timing is asserted."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.common import run_child
from benchmarks.study_rows import EXHAUSTIVE, KILL_ROW_VARIABLE, LOOP

ROOT = Path(__file__).resolve().parents[1]
KILLED = "  same, NCHW"
# The loop after the exhaustive row: cudnn.benchmark on, then off; benchmark_limit 0, then untouched (the
# loop leaves it as it finds it), so the loop would report 0 had it inherited the exhaustive row's process.
ROWS = [EXHAUSTIVE, KILLED, LOOP]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """gpu_study --smoke on the CPU, its levers section only, with ROWS in that order and KILLED's process
    killed by the test hook (SIGKILL, as the out-of-memory killer would)."""
    out = tmp_path_factory.mktemp("study")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_study", "--device", "cpu", "--smoke", "--out", str(out),
                           "--sections", "levers", "--rows", *ROWS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, KILL_ROW_VARIABLE: KILLED})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "study.json").read_text())


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.cudnn.is_available(), reason="a torch without cuDNN cannot set its flags")
def test_each_row_runs_in_a_fresh_process_with_the_settings_it_asked_for(study):
    rows = study["levers"]["rows"]
    assert list(rows) == ROWS  # --rows' order
    exhaustive, loop = rows[EXHAUSTIVE]["settings"], rows[LOOP]["settings"]
    assert exhaustive["cudnn_benchmark"] is True and exhaustive["cudnn_benchmark_limit"] == 0
    default_limit = torch.backends.cudnn.benchmark_limit  # this process never changed it
    assert loop["cudnn_benchmark"] is False and loop["cudnn_benchmark_limit"] == default_limit != 0
    assert len({exhaustive["pid"], loop["pid"], study["pid"]}) == 3
    for name in (EXHAUSTIVE, LOOP):
        assert rows[name]["error"] is None and rows[name]["images_per_s"] > 0 and rows[name]["seconds"] > 0
        assert rows[name]["settings"]["torch_threads"] >= 1
    # the ratio to the loop of the same run, for rows measured before the loop too
    assert rows[LOOP]["vs_loop"] == 1.0
    assert rows[EXHAUSTIVE]["vs_loop"] == pytest.approx(rows[EXHAUSTIVE]["images_per_s"] / rows[LOOP]["images_per_s"])
    assert study["cpu"] and study["python"] and study["torch"] == torch.__version__ and "driver" in study


@pytest.mark.slow
def test_a_row_whose_process_dies_is_recorded_and_the_next_row_runs(study):
    killed, after = study["levers"]["rows"][KILLED], study["levers"]["rows"][LOOP]
    assert killed["error"].startswith("killed by SIGKILL") and killed["images_per_s"] == 0
    assert killed["settings"] is None and killed["variant"]["channels_last"] is False  # NCHW: the row it was
    assert after["error"] is None and after["images_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("script, error", [
    ("import os; os.abort()", "killed by SIGABRT"),
    ("import sys; print('no such row'); sys.exit(2)", "exited with status 2: no such row"),
    ("pass", "exited without a readable result (FileNotFoundError)"),
])
def test_run_child_reports_how_a_child_failed(tmp_path, script, error):
    child = run_child([sys.executable, "-c", script], tmp_path / "result.json", timeout_s=60)
    assert child.error == error and child.result is None


@pytest.mark.slow
def test_run_child_reads_what_the_child_wrote(tmp_path):
    script = f"import json; json.dump({{'images_per_s': 1.5}}, open({str(tmp_path / 'r.json')!r}, 'w'))"
    child = run_child([sys.executable, "-c", script], tmp_path / "r.json", timeout_s=60)
    assert child.error is None and child.result == {"images_per_s": 1.5}


@pytest.mark.slow
def test_run_child_stops_a_child_at_its_time_limit_with_what_it_started(tmp_path):
    """A worker the child started (torch.compile's, say) ends with it, and holds no memory after."""
    worker_pid = tmp_path / "worker.pid"
    script = ("import subprocess, sys, time\n"
              "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              f"open({str(worker_pid)!r}, 'w').write(str(worker.pid))\n"
              "time.sleep(120)\n")
    start = time.monotonic()
    child = run_child([sys.executable, "-c", script], tmp_path / "result.json", timeout_s=2)
    assert child.error == "timed out after 2 s" and time.monotonic() - start < 60
    assert not _running(int(worker_pid.read_text()))


def _running(pid: int, wait_s: float = 10.0) -> bool:
    """Whether `pid` still runs after up to wait_s (a killed orphan may stay a zombie until init reaps it)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True
