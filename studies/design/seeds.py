"""The seeds of a study's runs, each derived from the study's --seed, the stage and the run's number.

A search trial trains with trial_seed(study seed, its Optuna number), so trials do not all share one
seed; repeat r of the confirmation stage with repeat_seed(study seed, r). Both validate on classes
drawn with the study seed itself (split_seed): every search trial on the same classes (fold 0), repeat
r on fold r. numpy's SeedSequence mixes the three numbers into one 32-bit seed, the same on every
machine and Python, so the same study seed gives the same runs.
"""
from __future__ import annotations

import numpy as np

SEARCH, CONFIRM = 1, 2  # the stage, so that trial n and repeat n train with different seeds
SEED_KEYS = ("seed", "split_seed", "val_fold")  # the config keys set here: not searched values


def _derived(study_seed: int, stage: int, number: int) -> int:
    return int(np.random.SeedSequence([study_seed, stage, number]).generate_state(1)[0])


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The training seed of search trial `trial_number` (Optuna's number: the order the trials started)."""
    return _derived(study_seed, SEARCH, trial_number)


def repeat_seed(study_seed: int, repeat: int) -> int:
    """The training seed of repeat `repeat` of every configuration the confirmation stage trains."""
    return _derived(study_seed, CONFIRM, repeat)


def trial_seeds(study_seed: int, trial_number: int) -> dict[str, int]:
    """The config values a search trial's seeds set: its own training seed, the study's split seed."""
    return {"seed": trial_seed(study_seed, trial_number), "split_seed": study_seed}


def repeat_seeds(study_seed: int, repeat: int) -> dict[str, int]:
    """The config values repeat `repeat` of the confirmation sets: its seed, the study's split, fold `repeat`."""
    return {"seed": repeat_seed(study_seed, repeat), "split_seed": study_seed, "val_fold": repeat}
