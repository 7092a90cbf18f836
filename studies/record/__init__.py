"""What a study keeps: its MLflow experiment, parent run and one run per trial, the trials' weights as MLflow
models, the registered model, and the Optuna record that optuna-dashboard reads."""
