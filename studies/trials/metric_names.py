"""The names of the metrics a study selects, ranks and reports by, derived from the core's.

fit() reports each split's metrics as `<split>_<key>`, keyed by recall_key(k) and MAP_AT_R_KEY
(antimetric/evaluation/metrics.py), and selects a run's epoch on the first K of --recalls
(antimetric/training/loop.py selection_key). A study ranks trials, and ASHA stops them, on validation
Recall@1, so every study name below assumes that first K is 1: check_study_recalls refuses any other list
before Ray starts, where the trials would otherwise never report their objective and nothing would say so.
"""
from __future__ import annotations

from collections.abc import Sequence

from antimetric.errors import ConfigError
from antimetric.evaluation.metrics import MAP_AT_R_KEY, recall_key
from antimetric.evaluation.settings import parse_recalls

SELECTED_K = 1  # a study's trials select their epoch, and are ranked, by Recall@SELECTED_K
VAL, TEST = "val_", "test_"  # fit()'s prefixes of the validation and test splits' metrics

OBJECTIVE = VAL + recall_key(SELECTED_K)  # Recall@1 on training classes held out from training
TEST_RECALL = TEST + recall_key(SELECTED_K)
VAL_MAP_AT_R, TEST_MAP_AT_R = VAL + MAP_AT_R_KEY, TEST + MAP_AT_R_KEY
UNTRAINED_TEST_RECALL = "untrained_" + TEST_RECALL  # the best trial's ensemble before training (the baseline)
# The confirmation stage's winner and the default configuration, on the test classes (conclusions/confirm.py).
CONFIRMED_TEST_RECALL, DEFAULT_TEST_RECALL = "confirmed_" + TEST_RECALL, "default_" + TEST_RECALL


def check_study_recalls(recalls: Sequence[int] | str) -> None:
    """Refuse Recall@K values whose first (the core sorts them) is not SELECTED_K: the trials would select their
    epochs on another metric than the study's OBJECTIVE, and never report it."""
    ks = parse_recalls(recalls)
    if ks[0] != SELECTED_K:
        shown = ",".join(map(str, ks))
        raise ConfigError(f"--recalls {shown}: a study selects epochs and ranks trials by Recall@{SELECTED_K}, the "
                          f"first of --recalls; start the list with {SELECTED_K} (e.g. --recalls {SELECTED_K},{shown})")
