"""`make test` splits the suite between two test processes by file (tests/fixtures/xdist_groups.py): a file's tests
run in one process, and the files of a shared group in one, with real pytest-xdist on a generated suite."""
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFTEST = """
from tests.fixtures.xdist_groups import file_scheduler

def pytest_xdist_make_scheduler(config, log):
    return file_scheduler(config, log, {"shared": ("test_d.py", "test_e.py")})
"""
TEST_FILE = """
import os

def _ran(number):
    with open({log!r}, "a") as log:
        log.write(f"{{__name__}} {{number}} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")

""" + "".join(f"def test_{n}():\n    _ran({n})\n\n" for n in range(4))


@pytest.mark.slow  # a pytest of two processes
def test_each_file_and_each_shared_group_runs_in_one_test_process(tmp_path):
    suite, log = tmp_path / "suite", tmp_path / "ran.txt"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for name in "abcde":
        (suite / f"test_{name}.py").write_text(TEST_FILE.format(log=str(log)))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                           "no:cacheprovider", str(suite)], capture_output=True, text=True, timeout=300, cwd=suite,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    processes = defaultdict(set)
    for line in log.read_text().splitlines():
        module, _, worker = line.split()
        processes[module].add(worker)
    assert sorted(processes) == [f"test_{name}" for name in "abcde"]
    assert all(len(workers) == 1 for workers in processes.values()), dict(processes)  # 4 tests each: one process
    assert processes["test_d"] == processes["test_e"], dict(processes)
    assert len(set().union(*processes.values())) == 2  # both processes got work
