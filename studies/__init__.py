"""Hyperparameter studies of antimetric ensembles on Ray Tune, Optuna and MLflow.

Folders by role, low to high (a module imports only its own folder and those below; tests/studies/
test_layering.py checks it): `compat` (every private use of Ray, MLflow and Optuna) and `legacy` (the old module
paths a study's saved files name) < `design/` < `trials/` < `record/` < `conclusions/` < `lifecycle/` <
`extensions/` < `search` (the command line).
"""
from studies.legacy import answer_old_paths

answer_old_paths()  # before anything unpickles a study's saved state or model, which imports this package first
