"""The studies' layout: folders by role, imports only down their layers, and small folders (the old module
paths a study's saved files name: test_legacy.py)."""
from pathlib import Path

import pytest

import studies
from tests.fixtures.layers import modules_per_folder, package_sources, upward_imports

PACKAGE = Path(studies.__file__).parent
# Low to high, as studies/__init__.py says: a module imports its own folder and lower layers only.
LAYERS = {"compat": 0, "legacy": 0, "design": 1, "trials": 2, "record": 3, "conclusions": 4, "lifecycle": 5,
          "extensions": 6, "face": 7}


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
    assert counts.pop(".") <= 4  # compat, legacy, search and the package's own __init__ aside
    assert max(counts.values()) <= 10, counts
