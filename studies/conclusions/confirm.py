"""The confirmation stage: after the search, the best configurations and the default one trained again,
each `--repeats` times with its own seed and validation fold (studies/design/seeds.py), and reported as means with
95 % intervals. This module picks what to confirm and makes the table and the verdict from plain rows;
lifecycle/confirm_stage.py runs it with Ray Tune and records it.

A search picks its winner by a single noisy validation number, so the search's best is biased upwards;
training it again on other seeds and validation classes tells whether it really beats the default.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from studies.conclusions.intervals import Interval, interval
from studies.design.seeds import repeat_seeds
from studies.trials.metric_names import (
    CONFIRMED_TEST_RECALL,
    DEFAULT_TEST_RECALL,
    OBJECTIVE,
    TEST_MAP_AT_R,
    TEST_RECALL,
    VAL_MAP_AT_R,
)
from studies.trials.trainable import CONFIRM

DEFAULT = "default"  # the configuration `antimetric train` trains without options (with the study's fixed ones)
UNTRAINED = "untrained"  # the last row: the winner's ensemble before training, on the test classes
# The metrics of a repeat at its selected epoch (best validation Recall@1), reported per configuration.
METRICS = (OBJECTIVE, TEST_RECALL, VAL_MAP_AT_R, TEST_MAP_AT_R)
WINNER_KEYS = {"confirmed": CONFIRMED_TEST_RECALL, "default": DEFAULT_TEST_RECALL}


@dataclass(frozen=True)
class Candidate:
    """A configuration to confirm: its label ("trial 4", or DEFAULT) and the searched values it sets."""

    label: str
    values: dict[str, Any]


def candidates(ranked: list[tuple[str, dict[str, Any]]], top: int) -> list[Candidate]:
    """The `top` best distinct configurations of the search, then the default one. `ranked`: (label, searched
    values) of the finished search trials, best validation Recall@1 first; a configuration met twice counts once."""
    chosen, seen = [], set()
    for label, values in ranked:
        key = json.dumps(values, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        chosen.append(Candidate(label, values))
        if len(chosen) == top:
            break
    return [*chosen, Candidate(DEFAULT, {})]


def confirmation_grid(chosen: list[Candidate], study_seed: int, repeats: int) -> list[dict[str, Any]]:
    """One Tune config value (trainable.CONFIRM) per run: every candidate, repeat r with its seed and fold r."""
    return [{"config": c.label, "repeat": r, "values": {**c.values, **repeat_seeds(study_seed, r)}}
            for c in chosen for r in range(repeats)]


def describe(values: dict[str, Any]) -> str:
    """`ensemble_size=4, lr=0.0021`: a configuration's searched values, or DEFAULT for none."""
    if not values:
        return DEFAULT
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def repeat_row(config: dict[str, Any], history: pd.DataFrame | None, trial_dir: str) -> dict[str, Any] | None:
    """A confirmation run's row: its configuration, repeat, and METRICS at its best validation epoch (the first
    of equals); None for a run without a reported epoch."""
    if history is None or not len(history) or OBJECTIVE not in history:
        return None
    best = history.loc[history[OBJECTIVE].idxmax()]
    confirm = config[CONFIRM]
    searched = {k: v for k, v in confirm["values"].items() if k not in ("seed", "split_seed", "val_fold")}
    return {"label": confirm["config"], "config": describe(searched), "repeat": confirm["repeat"],
            "trial_dir": trial_dir, **{key: float(best[key]) for key in METRICS if key in best}}


def confirmation_table(repeats: pd.DataFrame, untrained_test_recall: float | None) -> pd.DataFrame:
    """One row per configuration, in the order they were confirmed: its repeats, and the mean and 95 %
    half-width of each METRIC; then the untrained ensemble's test Recall@1 as the last row."""
    rows = []
    for label, group in repeats.groupby("label", sort=False):
        row: dict[str, Any] = {"config": group["config"].iloc[0], "trial": "" if label == DEFAULT else label,
                               "repeats": len(group)}
        for key in METRICS:
            if key in group:
                spread = interval(group[key].tolist())
                row[f"{key}_mean"], row[f"{key}_ci95"] = spread.mean, spread.ci95
        rows.append(row)
    if untrained_test_recall is not None:
        rows.append({"config": UNTRAINED, "trial": "", "repeats": 1, f"{TEST_RECALL}_mean": untrained_test_recall})
    return pd.DataFrame(rows)


def winner_row(table: pd.DataFrame) -> pd.Series:
    """The configuration with the best validation mean (the untrained row has none)."""
    trained = table[table["config"] != UNTRAINED]
    return trained.loc[trained[f"{OBJECTIVE}_mean"].idxmax()]


def spread(row: pd.Series, key: str = TEST_RECALL) -> Interval:
    return Interval(float(row[f"{key}_mean"]), float(row[f"{key}_ci95"]), int(row["repeats"]))


def overlap(a: Interval, b: Interval) -> bool:
    """Whether two 95 % intervals overlap (always, where one has none: n=1)."""
    if math.isnan(a.ci95) or math.isnan(b.ci95):
        return True
    return a.mean - a.ci95 <= b.mean + b.ci95 and b.mean - b.ci95 <= a.mean + a.ci95


def verdict(table: pd.DataFrame) -> str:
    """The plain-words answer: does the best configuration found beat the default on the test classes, with
    the intervals and n; and is the runner-up distinguishable from it."""
    trained = table[table["config"] != UNTRAINED]
    best = winner_row(table)
    default = trained[trained["config"] == DEFAULT].iloc[0]
    best_test, default_test = spread(best), spread(default)
    n = f"n={best_test.n}"
    if best["config"] == DEFAULT:
        text = f"the default is the best configuration by validation: {best_test} test Recall@1"
    elif overlap(best_test, default_test):
        text = (f"best found vs the default: {_bare(best_test)} vs {_bare(default_test)} test Recall@1 ({n}); "
                f"within the interval, not distinguishable at {n}")
    elif best_test.mean > default_test.mean:
        text = f"best found beats the default: {_bare(best_test)} vs {_bare(default_test)} test Recall@1 ({n})"
    else:
        text = (f"the default beats the best found on the test classes: {_bare(default_test)} vs "
                f"{_bare(best_test)} test Recall@1 ({n})")
    others = trained[trained.index != best.name].sort_values(f"{OBJECTIVE}_mean", ascending=False)
    if len(others):
        runner = others.iloc[0]
        name = DEFAULT if runner["config"] == DEFAULT else f"runner-up ({runner['trial']})"
        if runner["config"] != DEFAULT or best["config"] == DEFAULT:
            within = overlap(best_test, spread(runner))
            text += f"; {name} {'within' if within else 'outside'} the interval ({_bare(spread(runner))})"
    return text


def _bare(value: Interval) -> str:
    """"62.1 ± 2.3 %": an interval without its n, where the sentence gives n once."""
    return str(value).rsplit(" (n=", 1)[0]
