"""What a command-line process spends outside its work: `python -m antimetric` and `python -m studies.search` end
without Python's last garbage collection (3-4 s of a study's exit), still with their exit code and atexit handlers;
a study starts without what only its end needs."""
import os
import subprocess
import sys

import pytest

from tests.fixtures.studies import RAY_ENV

# Run as `python -m MODULE ARGS` runs it, with an atexit handler registered first (so run last) that reports how many
# objects were frozen out of the last collection.
AT_EXIT = """
import atexit, gc, runpy, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count(), flush=True))
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("module, args, error", [
    ("antimetric", ["prepare", "--data-name", "cub", "--data-path", "{tmp}"], "error: "),
    ("studies.search", ["demo", "--num-samples", "-1"], "error: python -m studies.search: argument --num-samples"),
])
def test_a_command_exits_with_its_code_and_its_objects_frozen(tmp_path, module, args, error):
    (tmp_path / "cub").mkdir()  # no CUB layout in it: prepare refuses
    proc = subprocess.run([sys.executable, "-c", AT_EXIT, module, *(a.format(tmp=tmp_path) for a in args)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **RAY_ENV})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(error) and len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
    frozen = int(proc.stdout.split("frozen ", 1)[1])
    assert frozen > 10_000, proc.stdout  # torch and the rest are loaded by then


@pytest.mark.slow
def test_a_study_command_starts_without_what_only_its_end_needs():
    """scikit-learn (Optuna's parameter importances, drawn once at a study's end) took 1 s of every start."""
    probe = "import sys, studies.search; print(sorted({'sklearn', 'optuna.importance'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
