"""The Ray Tune trainable: one config dict -> the core's fit() -> tune.report every epoch."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from antimetric.config import RunConfig, resolve
from antimetric.errors import ConfigError
from antimetric.train import BEST_FILE, EpochResult, fit

OBJECTIVE = "val_recall_at_1"  # Recall@1 on training classes held out from training
EPOCH = "epoch"  # the time attribute ASHA schedules on

# Study defaults over the core's: a validation split to select on, quiet loaders inside trials.
TRIAL_DEFAULTS: dict[str, Any] = {"val_fraction": 0.2, "num_workers": 0}


def trial_config(config: dict[str, Any]) -> RunConfig:
    """Merge a Tune config dict over the study defaults into the core's resolved config."""
    values = {**TRIAL_DEFAULTS, **config}
    if not Path(values.get("data_path", "data")).is_absolute():
        raise ConfigError(
            f"data_path {values.get('data_path', 'data')!r} must be absolute in a study: Ray runs each trial in its "
            "own folder (use os.path.abspath)"
        )
    return resolve(RunConfig.from_flat(values))


def train_ensemble(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. Reports OBJECTIVE, test Recall@K, MAP@R, loss, branch accuracy,
    images/s and epoch seconds every epoch, each with a resumable checkpoint."""
    run_config = trial_config(config)
    run_config.output_dir = tune.get_context().get_trial_dir()
    run_config.run_name = "run"
    best_file = Path(run_config.output_dir) / run_config.run_name / BEST_FILE  # fit() writes it on each new best

    def report(result: EpochResult, save_checkpoint) -> None:
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder))
            if best_file.exists():  # the best weights so far travel with every checkpoint
                shutil.copy2(best_file, Path(folder) / BEST_FILE)
            tune.report({EPOCH: result.epoch, **result.metrics}, checkpoint=tune.Checkpoint.from_directory(folder))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        fit(run_config, report)
        return
    with checkpoint.as_directory() as folder:
        restored_best = Path(folder) / BEST_FILE
        if restored_best.exists() and not best_file.exists():  # resumed elsewhere: bring the best weights along
            best_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(restored_best, best_file)
        fit(run_config, report, resume_from=Path(folder))
