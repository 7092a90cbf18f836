"""The old module paths of studies/legacy.py: each is named by a file a study saved before the folders, imports
as its module's new place, and nothing of ours imports it."""
import ast
import importlib
import io
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import pytest

from studies import legacy
from tests.fixtures.layers import imported_names

ROOT = Path(legacy.__file__).parent.parent
BEFORE = ROOT / "tests" / "fixtures" / "before_folders"
# What a smoke study saved with the code before the folders (commit 3db3978, --workers-per-trial 2): Tune's
# tuner.pkl, the Optuna searcher's searcher-state-*.pkl, and the python_model.pkl MLflow saved for a trial's
# model (commit df06c54). `Tuner.restore` and MLflow's pyfunc loader unpickle them.
SAVED = ("tuner.pkl", "searcher-state.pkl", "python_model.pkl")


def _studies_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, name) of every class or function of the studies a pickle names (protocol 2's GLOBAL, 4's
    STACK_GLOBAL of the two strings pushed before it, memoised or not)."""
    found, strings, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            strings.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        elif op.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
    return {(module, name) for module, name in found if module.split(".")[0] == "studies"}


NAMED = sorted({pair for name in SAVED for pair in _studies_globals((BEFORE / name).read_bytes())})


def test_the_old_paths_are_those_the_saved_files_name():
    assert {module for module, _ in NAMED} == set(legacy.MOVED)


@pytest.mark.parametrize("old", sorted(legacy.MOVED))
def test_an_old_path_imports_as_its_new_place(old):
    assert importlib.import_module(old) is importlib.import_module(legacy.MOVED[old])
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists()  # an alias only, never a second copy


@pytest.mark.slow  # a fresh interpreter
def test_the_saved_files_load_with_what_they_name_at_its_new_place():
    """In a fresh interpreter, so that nothing this test session imported already answers an old path."""
    code = (f"import pickle, sys\nfor name in {SAVED!r}:\n    pickle.loads(open({str(BEFORE)!r} + '/' + name, 'rb').read())\n"
            f"for module, name in {NAMED!r}:\n"
            "    print(module, getattr(sys.modules[module], name).__module__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(tuple(line.split()) for line in proc.stdout.splitlines()) == \
        sorted((old, legacy.MOVED[old]) for old, _ in NAMED)


@pytest.mark.parametrize("old, name", NAMED)
def test_what_is_saved_now_names_the_new_place(old, name):
    saved = pickle.dumps(getattr(importlib.import_module(legacy.MOVED[old]), name))
    assert _studies_globals(saved) == {(legacy.MOVED[old], name)}


def test_nothing_of_ours_imports_a_module_by_its_old_path():
    """The old paths serve saved files only; code, tests and benchmarks name each module where it lives."""
    found = [f"{path.relative_to(ROOT)}:{line}: {name}"
             for folder in ("antimetric", "studies", "tests", "benchmarks", "kernels")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for line, name in imported_names(ast.parse(path.read_text(), str(path)))
             if name in legacy.MOVED or any(name.startswith(old + ".") for old in legacy.MOVED)]
    assert not found, found
