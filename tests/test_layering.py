"""The core stands alone: `antimetric` and each of its modules import without Ray, MLflow, Optuna, pandas or
the `studies` package (the core reaches those only through antimetric/base/extensions.py's entry points)."""
import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import antimetric
from tests.fixtures.layers import imported_names, modules_per_folder, package_sources, upward_imports

FORBIDDEN = ("ray", "mlflow", "optuna", "pandas", "studies", "kernels", "benchmarks")
# The core's layers, low to high: a module imports only its own folder and lower layers; folders of one layer
# (model and data) never import each other. docs/map.md draws the same picture.
LAYERS = {
    "errors": 0,
    "base": 1,  # field declarations, whole-or-nothing writes, work folders, entry points
    "model": 2, "data": 2,
    "evaluation": 3,
    "training": 4,
    "retrieval": 5,
    "face": 6,  # the package's face, its top-level modules: __init__ (antimetric.load, ...), __main__, cli, options
}
CORE = Path(antimetric.__file__).parent
NOT_IMPORTED = {"antimetric.__main__"}  # runs the command line when imported; the source check below covers it

# Imports each module named in argv[1] in a child of its own, forked from a process that has imported the
# core's third-party dependencies but no module of antimetric: each module's import graph is loaded afresh
# (a module imported after another would find the other's imports done), and a child costs ~0.1 s where a
# fresh interpreter would import torch again (~3 s). Prints, per module, the forbidden packages then loaded.
PROBE = """
import json, os, sys
import numpy, PIL.Image, scipy.io, thop, torch, torchvision, tqdm  # the core's dependencies: once, before the forks

names, forbidden = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))


def loaded():
    return sorted({name.partition(".")[0] for name in sys.modules} & forbidden)


def probe(name):
    try:
        __import__(name)
        return {"loaded": loaded()}
    except BaseException as error:  # reported to the test, which fails on it
        return {"loaded": loaded(), "error": f"{type(error).__name__}: {error}", "missing": getattr(error, "name", None)}


report = {"before any module": {"loaded": loaded()}}
for name in names:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        with os.fdopen(write, "w") as out:
            out.write(json.dumps(probe(name)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        report[name] = json.loads(answer.read())
    os.waitpid(pid, 0)
print(json.dumps(report))
"""


def core_modules() -> list[str]:
    found = pkgutil.walk_packages(antimetric.__path__, "antimetric.", onerror=lambda name: None)
    return ["antimetric", *sorted(m.name for m in found if m.name not in NOT_IMPORTED)]


def source_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_every_source_file_is_a_module_the_import_check_finds():
    """A folder without __init__.py would hide its modules from pkgutil, and so from the check below."""
    named = {".".join(("antimetric", *path.relative_to(CORE).with_suffix("").parts)).removesuffix(".__init__")
             for path in source_files()}
    assert named - NOT_IMPORTED == set(core_modules())


@pytest.mark.slow  # a process per core module
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the probe forks one child per module")
def test_no_core_module_loads_the_studies_stack():
    names = core_modules()
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(names), json.dumps(FORBIDDEN)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {"before any module", *names}
    loads = {name: found["loaded"] for name, found in report.items() if found["loaded"]}
    assert not loads, f"modules that load what the core must not import: {loads}"
    failed = {name: found["error"] for name, found in report.items() if "error" in found}
    assert not failed, failed


def test_no_core_source_imports_the_studies_stack_even_lazily():
    """Also inside functions, which the import check above does not run: the core calls studies' code only
    through entry points (antimetric/base/extensions.py)."""
    found = [f"{path.relative_to(CORE.parent)}:{line}: {name}" for path in source_files()
             for line, name in imported_names(ast.parse(path.read_text(), str(path)))
             if name.partition(".")[0] in FORBIDDEN]
    assert not found, found


def test_tests_import_shared_code_from_fixtures_never_from_a_conftest_or_a_test_module():
    """tests/fixtures/ holds what tests share; a conftest.py holds fixtures, which pytest hands out."""
    tests = Path(__file__).parent
    found = [f"{path.relative_to(tests.parent)}:{line}: {name}" for path in sorted(tests.rglob("*.py"))
             for line, name in imported_names(ast.parse(path.read_text(), str(path)))
             if any(part == "conftest" or part.startswith("test_") for part in name.split("."))]
    assert not found, found


def _part(module: str) -> str:
    """The folder (or top-level module) of a core module: antimetric.model.ensemble -> model."""
    parts = module.split(".")
    part = parts[1] if len(parts) > 1 else "__init__"
    return "face" if part in ("__init__", "__main__", "cli", "options") else part


def _sources() -> dict[str, str]:
    return package_sources(CORE)


def core_upward_imports(sources: dict[str, str]) -> list[str]:
    return upward_imports(sources, LAYERS, _part)


def test_every_part_of_the_core_has_a_layer():
    assert {_part(module) for module in _sources()} <= set(LAYERS)


def test_no_import_arrow_runs_up_the_layers():
    assert not core_upward_imports(_sources())


@pytest.mark.parametrize("planted", [
    ("antimetric.model.ensemble", "from antimetric.training.loop import fit"),  # up
    ("antimetric.data.loading", "def f():\n    from antimetric.model.ensemble import build_model"),  # sideways, lazy
    ("antimetric.evaluation.grid", "import antimetric.retrieval.trained"),
])
def test_the_layer_check_finds_a_planted_upward_import(planted):
    module, line = planted
    sources = _sources()
    sources[module] += "\n" + line + "\n"
    assert len(core_upward_imports(sources)) == 1


def test_the_core_has_a_small_face_and_small_folders():
    """A newcomer finds a thing by its folder: at most 6 modules at the top (the face, errors), at most 10 in
    a folder. A folder that outgrows that splits by role, as training/parallel/ did."""
    counts = modules_per_folder(CORE)
    assert counts.pop(".") <= 6
    assert max(counts.values()) <= 10, counts
