"""The Ray Tune trainable: one config dict -> the core's fit() -> tune.report every epoch."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune

from antimetric.errors import ConfigError
from antimetric.model.cost import EnsembleCost, ensemble_cost
from antimetric.training.config import RunConfig, resolve
from antimetric.training.loop import EpochResult, fit
from antimetric.training.run_folder import BEST_FILE, RETRIEVALS_FILE
from studies.design.settings import TRIAL_DEFAULTS
from studies.trials.metric_names import OBJECTIVE, TEST_RECALL

EPOCH = "epoch"  # the time attribute ASHA schedules on
REPORTED_AGAIN = "reported_again"  # True on a multi-worker trial's result of its checkpoint's epoch, again on resume
WORLD_SIZE = "world_size"  # reported by a multi-worker trial (studies/trials/train_driver.py): its workers, a param in MLflow
# The trial's selected epoch so far (best OBJECTIVE) and its OBJECTIVE, reported every epoch for Ray's console; MLflow
# logs its own best_* at each new selected epoch (studies/record/tracking.py).
BEST_EPOCH, BEST_OBJECTIVE = "best_" + EPOCH, "best_" + OBJECTIVE
COST_KEYS = tuple(f.name for f in fields(EnsembleCost))  # reported every epoch (trial_cost)
SCRATCH = "antimetric"  # trials' private folders, in Ray's session folder (scratch_folder)

# The best epoch's files, which travel with every checkpoint: its weights and its retrieval grid.
BEST_EPOCH_FILES = (BEST_FILE, RETRIEVALS_FILE)

# A confirmation run's key in its Tune config (studies/conclusions/confirm.py): {"config": its label ("default",
# "trial 4"), "repeat": r, "values": the config values it sets}. One key, so that one grid_search lists the runs.
CONFIRM = "confirm"


def ended_early(epochs_run: int, config: dict[str, Any]) -> bool:
    """Whether a trial stopped before the last epoch its config asks for (ASHA stopped it, unless it failed)."""
    num_epochs = int(config.get("num_epochs") or 0)
    return bool(num_epochs and epochs_run < num_epochs)


def trial_cost(config: RunConfig) -> dict[str, float]:
    """What the trial's ensemble costs to embed one test image: embedding_dims, params, gflops_per_image
    (antimetric/model/cost.py; counted on the meta device, in tens of milliseconds)."""
    return asdict(ensemble_cost(config.model, config.data.image_size))


def trial_config(config: dict[str, Any]) -> RunConfig:
    """Merge a Tune config dict over the study defaults into the core's resolved config (a confirmation
    run's values, under CONFIRM, over the rest)."""
    confirmed = config.get(CONFIRM, {}).get("values", {})
    values = {**TRIAL_DEFAULTS, **{k: v for k, v in config.items() if k != CONFIRM}, **confirmed}
    if not Path(values.get("data_path", "data")).is_absolute():
        raise ConfigError(
            f"data_path {values.get('data_path', 'data')!r} must be absolute in a study: Ray runs each trial in its "
            "own folder (use os.path.abspath)"
        )
    return resolve(RunConfig.from_flat(values))


def reported(result: EpochResult, cost: dict[str, float] | None = None) -> dict[str, float]:
    """An epoch's metrics, the ones a person follows first; the selected epoch so far and its objective
    (BEST_EPOCH, BEST_OBJECTIVE), which Ray's console shows (studies/lifecycle/console.py). Then the trial's cost
    (trial_cost), the same every epoch, which a Pareto study's searcher reads from the last report. Also the
    values the trial resolved (device, workers), which the MLflow callback records as params."""
    first = {key: result.metrics[key] for key in (OBJECTIVE, TEST_RECALL, "loss") if key in result.metrics}
    # what the trial chose where its config said auto, as text (not a metric), for its MLflow params
    resolved = {key: str(value) for key, value in result.decisions.as_dict().items()}
    selected = {BEST_EPOCH: result.best_epoch, BEST_OBJECTIVE: result.best_metrics[OBJECTIVE]} \
        if OBJECTIVE in result.best_metrics else {}
    return {EPOCH: result.epoch, **first, **result.metrics, **selected, **(cost or {}), **resolved}


def scratch_folder() -> Path:
    """Where trials keep their private folders: in Ray's session folder of their node, which a local
    study removes at its end (run_study), so that a trial killed with its driver leaves them only there."""
    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name() / SCRATCH


def train_ensemble(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. Reports OBJECTIVE, test Recall@K, MAP@R, loss, branch accuracy,
    images/s and epoch seconds every epoch, each with a resumable checkpoint.

    The core's run folder goes to a private temporary folder, removed when the trial ends, not to the
    trial folder: Ray copies that folder to storage while files are being written (temporary files
    landed there), and the checkpoints already hold all a trial keeps: the state to resume from
    (state.pt) and the best epoch's files so far (best.pt, retrievals.png). fit() writes no last.pt for the
    same reason."""
    def report(metrics: dict[str, Any], folder: Path) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train_trial(config, tune.get_context().get_trial_name(), tune.get_checkpoint(), report)


def train_trial(config: dict[str, Any], trial_name: str, checkpoint, report: Callable[[dict[str, Any], Path], None],
                keep_best: bool = True) -> None:
    """fit() of a trial's config in a private scratch folder, from `checkpoint` (a Ray checkpoint, or None);
    report(metrics, checkpoint folder) every epoch, while the folder exists. The best epoch's files so far travel
    with every checkpoint when `keep_best` (in a multi-worker trial, rank 0's: only its run folder gets them)."""
    run_config = trial_config(config)
    cost = trial_cost(run_config)
    scratch = scratch_folder()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trial-", dir=scratch) as private:
        run_config.output_dir = private
        run_config.run_name = trial_name.replace("/", "_")  # the grid's title says it
        run_dir = Path(private) / run_config.run_name  # fit() writes BEST_EPOCH_FILES there on each new best
        restored = Path(private) / "restored"  # the best epoch's files before a resume, while no newer best
        restored.mkdir()

        def on_epoch_end(result: EpochResult, save_checkpoint) -> None:
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(Path(folder))
                best = run_dir if (run_dir / BEST_FILE).exists() else restored
                for name in BEST_EPOCH_FILES if keep_best else ():  # the best epoch's files so far travel with
                    if (best / name).exists():  # every checkpoint
                        shutil.copy2(best / name, Path(folder) / name)
                report(reported(result, cost), Path(folder))

        if checkpoint is None:
            fit(run_config, on_epoch_end, write_last=False)
            return
        with checkpoint.as_directory() as folder:
            for name in BEST_EPOCH_FILES:  # copied: Ray deletes old checkpoints as new ones come
                if (Path(folder) / name).exists():
                    shutil.copy2(Path(folder) / name, restored / name)
            fit(run_config, on_epoch_end, resume_from=Path(folder), write_last=False)
