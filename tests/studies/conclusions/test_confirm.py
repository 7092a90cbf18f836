"""The confirmation stage's choices and report from plain rows (studies/conclusions/confirm.py); the stage itself runs in
test_confirm_stage.py."""
import math

import pandas as pd

from studies.conclusions.confirm import (
    DEFAULT,
    UNTRAINED,
    candidates,
    confirmation_grid,
    confirmation_table,
    verdict,
    winner_row,
)


def test_the_best_distinct_configurations_then_the_default():
    ranked = [("trial 2", {"lr": 0.1}), ("trial 0", {"lr": 0.1}), ("trial 1", {"lr": 0.2}), ("trial 3", {"lr": 0.3})]
    assert [c.label for c in candidates(ranked, 2)] == ["trial 2", "trial 1", DEFAULT]
    assert [c.label for c in candidates(ranked[:1], 3)] == ["trial 2", DEFAULT]  # fewer finished than asked
    grid = confirmation_grid(candidates(ranked, 1), study_seed=4, repeats=2)
    assert [(g["config"], g["repeat"], g["values"]["val_fold"], g["values"]["split_seed"]) for g in grid] == \
        [("trial 2", 0, 0, 4), ("trial 2", 1, 1, 4), (DEFAULT, 0, 0, 4), (DEFAULT, 1, 1, 4)]
    assert grid[0]["values"]["seed"] == grid[2]["values"]["seed"] != grid[1]["values"]["seed"]
    assert grid[0]["values"]["lr"] == 0.1 and "lr" not in grid[2]["values"]


def _repeats(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for label, tests in values.items():
        for r, test in enumerate(tests):
            rows.append({"label": label, "config": DEFAULT if label == DEFAULT else f"lr={label}", "repeat": r,
                         "val_recall_at_1": test + 0.01, "test_recall_at_1": test, "val_map_at_r": test / 2,
                         "test_map_at_r": test / 3})
    return pd.DataFrame(rows)


def test_the_table_has_a_row_per_configuration_and_the_untrained_row_last():
    table = confirmation_table(_repeats({"trial 1": [0.60, 0.62, 0.64], DEFAULT: [0.50, 0.55, 0.60]}), 0.2)
    assert list(table["config"]) == ["lr=trial 1", DEFAULT, UNTRAINED]
    assert list(table["repeats"]) == [3, 3, 1]
    first = table.iloc[0]
    assert math.isclose(first["test_recall_at_1_mean"], 0.62)
    assert math.isclose(first["test_recall_at_1_ci95"], 4.302652729911275 * 0.02 / math.sqrt(3))  # t(0.975, 2)
    assert {"val_recall_at_1_ci95", "test_map_at_r_mean", "val_map_at_r_ci95"} <= set(table.columns)
    assert table.iloc[-1]["test_recall_at_1_mean"] == 0.2
    assert winner_row(table)["config"] == "lr=trial 1"


def test_the_verdict_says_whether_the_intervals_separate():
    apart = confirmation_table(_repeats({"trial 1": [0.80, 0.81, 0.82], DEFAULT: [0.50, 0.51, 0.52],
                                         "trial 2": [0.79, 0.80, 0.81]}), 0.1)
    assert verdict(apart) == ("best found beats the default: 81.0 ± 2.5 % vs 51.0 ± 2.5 % test Recall@1 (n=3); "
                              "runner-up (trial 2) within the interval (80.0 ± 2.5 %)")
    close = confirmation_table(_repeats({"trial 1": [0.50, 0.60, 0.70], DEFAULT: [0.45, 0.55, 0.65]}), 0.1)
    assert verdict(close).startswith("best found vs the default: 60.0 ± 24.8 % vs 55.0 ± 24.8 % test Recall@1 "
                                     "(n=3); within the interval, not distinguishable at n=3")
    default_best = confirmation_table(_repeats({"trial 1": [0.30, 0.31, 0.32], DEFAULT: [0.50, 0.51, 0.52]}), 0.1)
    assert verdict(default_best).startswith("the default is the best configuration by validation: 51.0 ± 2.5 %")
    assert "outside the interval" in verdict(default_best)
