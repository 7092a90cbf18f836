"""The old module paths that files a study saved still name, and nothing else.

Before 2026-12-03 every module of the studies sat at the top of `studies/`. Ray Tune's saved state and the MLflow
models a study logged pickle classes and functions by module path, so a study started before the folders names
some modules by their old paths. Each entry of MOVED is such a path, found in those files (a study of that code,
commit 3db3978: tests/fixtures/before_folders/), with the file and what it names there; it imports as the module
at its new place, so that the study resumes (`--resume`) and its models load. The other modules that moved are
named by no saved file and keep no old name. tests/studies/test_legacy.py unpickles the saved files.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {  # old module path -> its place now
    # Tune's tuner.pkl (the search's and the confirmation stage's): the progress reporter StudyReporter; with
    # search_gen_state-*.json and basic-variant-state-*.json also trial_name and trial_dirname (the trials' names)
    "studies.console": "studies.lifecycle.console",
    # tuner.pkl: the callback OptunaRecordCallback (the study's Optuna record)
    "studies.optuna_live": "studies.record.optuna_live",
    # tuner.pkl: the callback MLflowTrialCallback (each trial's MLflow run)
    "studies.tracking": "studies.record.tracking",
    # tuner.pkl of a study of ASHA (not --objective pareto): the scheduler ResumableASHA
    "studies.resumable_asha": "studies.trials.resumable_asha",
    # tuner.pkl of a study whose trials have several workers (--gpus-per-trial N > 1, --workers-per-trial N): the
    # callback ReleaseTrainGroups
    "studies.train_driver": "studies.trials.train_driver",
    # tuner.pkl and searcher-state-*.pkl (the Optuna searcher): the define-by-run space SpaceSampler
    "studies.spaces": "studies.design.spaces",
    # python_model.pkl of every model a study logged to MLflow (and registered): the pyfunc class EnsembleModel
    "studies.pyfunc_model": "studies.record.pyfunc_model",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module's old path as the module at its new place (one module object, two names)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        """The module ran when its new name was imported."""


def answer_old_paths() -> None:
    """Let the old paths of MOVED import (once per process; `import studies` does it, as unpickling does first)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
