"""Search spaces as plain data, built from each dataset's study defaults (studies/design/study_defaults.py), and their
sampling with Optuna.

A space maps a config key to one of
  {"type": "choice", "values": [...]}
  {"type": "int", "low": a, "high": b, "log": bool}
  {"type": "float", "low": a, "high": b, "log": bool}
`meta_class_size`, if searched, must be an int range: it is narrowed per trial to the sizes
the core accepts for the sampled ensemble size (at most the number of training classes,
and enough codes, meta**ensemble >= classes), so no trial gets a rejected combination.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import optuna

from antimetric.errors import ConfigError
from antimetric.training.meta_classes import check_class_count
from studies.design.seeds import trial_seeds
from studies.design.study_defaults import DATASET_STUDY_DEFAULTS, StudyDefaults

Space = dict[str, dict[str, Any]]


def dataset_space(name: str) -> Space:
    """The built-in space of a dataset, from the ranges of its study defaults."""
    return space_of(DATASET_STUDY_DEFAULTS[name])


def space_of(study: StudyDefaults) -> Space:
    """The space the ranges of a study's defaults span."""
    return {
        "ensemble_size": {"type": "choice", "values": list(study.ensemble_sizes)},
        "meta_class_size": {"type": "int", "low": study.meta_class_sizes[0], "high": study.meta_class_sizes[1],
                            "log": True},
        "share_type": {"type": "choice", "values": list(study.share_types)},
        "with_random": {"type": "choice", "values": [False, True]},
        "with_fc": {"type": "choice", "values": [False, True]},
        "lr": {"type": "float", "low": study.lr[0], "high": study.lr[1], "log": True},
    }


SPACES: dict[str, Callable[[], Space]] = {name: partial(dataset_space, name) for name in DATASET_STUDY_DEFAULTS}


def smallest_meta_class_size(n_classes: int, ensemble_size: int) -> int:
    """The least d with d**ensemble_size >= n_classes (and d >= 2)."""
    d = max(2, int(round(n_classes ** (1.0 / ensemble_size))) - 1)
    while d**ensemble_size < n_classes:
        d += 1
    return d


def meta_class_range(spec: dict[str, Any], ensemble_size: int, n_classes: int) -> tuple[int, int] | None:
    low = max(spec["low"], smallest_meta_class_size(n_classes, ensemble_size))
    high = min(spec["high"], n_classes)
    return (low, high) if low <= high else None


def restrict(space: Space, n_classes: int, fixed: dict[str, Any]) -> Space:
    """The space without ensemble sizes for which no meta-class size in range is valid."""
    check_class_count(n_classes)
    space = {name: dict(spec) for name, spec in space.items()}
    meta = space.get("meta_class_size")
    if meta is None:
        return space
    if meta["type"] != "int":
        raise ConfigError("meta_class_size must be searched as an int range ({'type': 'int', 'low':, 'high':})")
    ensemble = space.get("ensemble_size")
    sizes = ensemble["values"] if ensemble else [fixed["ensemble_size"]]
    valid = [e for e in sizes if meta_class_range(meta, e, n_classes) is not None]
    if not valid:
        raise ConfigError(
            f"no ensemble size in {sizes} has a valid meta-class size in [{meta['low']}, {meta['high']}] "
            f"for {n_classes} training classes"
        )
    if ensemble:
        ensemble["values"] = valid
    return space


class SpaceSampler:
    """A define-by-run function for ray.tune.search.optuna.OptunaSearch (a class, so that Tune can
    pickle it with the searcher's state)."""

    def __init__(self, space: Space, n_classes: int, fixed: dict[str, Any], study_seed: int | None = None) -> None:
        self.space = restrict(space, n_classes, fixed)
        self.n_classes = n_classes
        self.fixed_ensemble_size = fixed.get("ensemble_size")
        self.study_seed = study_seed

    def __call__(self, trial: optuna.Trial) -> dict[str, int] | None:
        """Suggests the trial's values; returns its seeds (studies/design/seeds.py), which Ray adds to its config."""
        ensemble_size = self.fixed_ensemble_size
        for name, spec in self.space.items():
            if name == "meta_class_size":
                low, high = meta_class_range(spec, ensemble_size, self.n_classes)
                trial.suggest_int(name, low, high, log=spec.get("log", False))
            else:
                value = suggest(trial, name, spec)
                if name == "ensemble_size":
                    ensemble_size = value
        return None if self.study_seed is None else trial_seeds(self.study_seed, trial.number)


def suggest(trial: optuna.Trial, name: str, spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "choice":
        return trial.suggest_categorical(name, spec["values"])
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    raise ConfigError(f"search space entry {name!r} has unknown type {kind!r}; use choice, int or float")


def distributions(space: Space, n_classes: int, fixed: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the (restricted) space, for rebuilding a study from Ray's results."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, spec in restrict(space, n_classes, fixed).items():
        if spec["type"] == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(spec["values"])
        elif spec["type"] == "int":
            out[name] = optuna.distributions.IntDistribution(spec["low"], spec["high"], log=spec.get("log", False))
        else:
            out[name] = optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=spec.get("log", False))
    return out
