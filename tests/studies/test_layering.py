"""The studies' layout: folders by role, imports only down their layers, small folders, and every module's
name from before the folders still importing (what a study saved then names modules by those paths)."""
import ast
import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import studies
from studies.record.pyfunc_model import EnsembleModel
from tests.fixtures.layers import imported_names, modules_per_folder, package_sources, upward_imports

PACKAGE = Path(studies.__file__).parent
ROOT = PACKAGE.parent
# Low to high, as studies/__init__.py says: a module imports its own folder and lower layers only.
LAYERS = {"compat": 0, "design": 1, "trials": 2, "record": 3, "conclusions": 4, "lifecycle": 5, "extensions": 6,
          "face": 7}


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "search"):
        return "face"
    return parts[1]


def studies_upward_imports(sources: dict[str, str]) -> list[str]:
    return upward_imports(sources, LAYERS, _part)


def test_every_part_of_the_studies_has_a_layer():
    assert {_part(module) for module in package_sources(PACKAGE)} == set(LAYERS)


def test_no_import_arrow_runs_up_the_studies_layers():
    assert not studies_upward_imports(package_sources(PACKAGE))


@pytest.mark.parametrize("planted", [
    ("studies.record.tracking", "from studies.lifecycle.study import run_study"),  # up
    ("studies.conclusions.pareto", "def f():\n    import studies.lifecycle.console"),  # up, lazy
    ("studies.compat", "from studies.design.settings import StudySettings"),  # the lowest layer reaching up
])
def test_the_layer_check_finds_a_planted_upward_import(planted):
    module, line = planted
    sources = package_sources(PACKAGE)
    sources[module] += "\n" + line + "\n"
    assert len(studies_upward_imports(sources)) == 1


def test_the_studies_have_a_small_top_and_small_folders():
    counts = modules_per_folder(PACKAGE)
    assert counts.pop(".") <= 3  # compat, search and the package's own __init__ aside
    assert max(counts.values()) <= 10, counts


@pytest.mark.parametrize("old", sorted(studies.MOVED))
def test_a_module_name_from_before_the_folders_imports_as_its_new_place(old):
    assert importlib.import_module(old) is importlib.import_module(studies.MOVED[old])
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists()  # an alias only, never a second copy


def _unpickle_in_a_fresh_interpreter(code: str) -> list[str]:
    """Run in a fresh interpreter, so that nothing this test session imported already answers an old name."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_a_model_a_study_logged_before_the_folders_unpickles_as_the_class_at_its_new_place():
    """tests/fixtures/before_folders/python_model.pkl is the python_model.pkl MLflow saved for a trial's model
    in a study run with the code before the move (commit df06c54); MLflow's pyfunc loader cloudpickles it."""
    fixture = ROOT / "tests" / "fixtures" / "before_folders" / "python_model.pkl"
    assert b"studies.pyfunc_model" in fixture.read_bytes()
    loaded = _unpickle_in_a_fresh_interpreter(
        f"import cloudpickle; print(type(cloudpickle.loads(open({str(fixture)!r}, 'rb').read())).__module__)")
    assert loaded == ["studies.record.pyfunc_model"]
    assert b"studies.record.pyfunc_model" in pickle.dumps(EnsembleModel)  # what is pickled now names the new place


def test_a_scheduler_pickled_by_its_old_path_loads_the_class_at_its_new_place():
    """As Ray's tuner.pkl names ResumableASHA (and the callbacks, the reporter, the sampler) since before the
    move: the GLOBAL opcode names module and class, and unpickling imports the module by that name."""
    loaded = _unpickle_in_a_fresh_interpreter(
        "import pickle; print(pickle.loads(b'cstudies.resumable_asha\\nResumableASHA\\n.').__module__)")
    assert loaded == ["studies.trials.resumable_asha"]


def test_nothing_of_ours_imports_a_module_by_its_old_name():
    """The old names serve saved state only; code, tests and benchmarks name each module where it lives."""
    found = [f"{path.relative_to(ROOT)}:{line}: {name}"
             for folder in ("antimetric", "studies", "tests", "benchmarks", "kernels")
             for path in sorted((ROOT / folder).rglob("*.py"))
             for line, name in imported_names(ast.parse(path.read_text(), str(path)))
             if name in studies.MOVED or any(name.startswith(old + ".") for old in studies.MOVED)]
    assert not found, found
