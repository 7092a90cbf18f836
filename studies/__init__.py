"""Hyperparameter studies of antimetric ensembles on Ray Tune, Optuna and MLflow."""
