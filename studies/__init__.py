"""Hyperparameter studies of antimetric ensembles on Ray Tune, Optuna and MLflow.

Folders by role, low to high (a module imports only its own folder and those below; tests/studies/
test_layering.py checks it): `compat` (every private use of Ray, MLflow and Optuna) < `design/` < `trials/` <
`record/` < `conclusions/` < `lifecycle/` < `extensions/` < `search` (the command line).

Before the folders, every module sat at the top of `studies/`. What a study saved then names them by those
paths: Ray's `tuner.pkl` and searcher state pickle the scheduler, callbacks and sampler, and an MLflow model
logged by a study pickles `studies.pyfunc_model.EnsembleModel`. So an old name still imports, as the module
at its new place (MOVED), and a study started before the move resumes and its models load.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {  # old module -> its place now
    **{f"studies.{name}": f"studies.design.{name}"
       for name in ("settings", "study_defaults", "spaces", "space_file", "seeds")},
    **{f"studies.{name}": f"studies.trials.{name}"
       for name in ("trainable", "trial_workers", "train_driver", "resumable_asha")},
    **{f"studies.{name}": f"studies.record.{name}"
       for name in ("tracking", "study_run", "trial_weights", "pyfunc_model", "optuna_record", "optuna_live",
                    "registry")},
    **{f"studies.{name}": f"studies.conclusions.{name}"
       for name in ("intervals", "confirm", "pareto", "study_note", "trials_table", "summary_print", "report",
                    "plots", "param_plots")},
    **{f"studies.{name}": f"studies.lifecycle.{name}"
       for name in ("study", "study_end", "study_lock", "checks", "console", "confirm_stage")},
    **{f"studies.{name}": f"studies.extensions.{name}" for name in ("model_source", "run_tracker")},
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module's old name as the module at its new place (one module object, two names)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        """The module ran when its new name was imported."""


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
